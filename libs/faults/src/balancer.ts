/**
 * What a load balancer in front of the gateways does for the suite's
 * clients: a (re)connecting client is sent to its home gateway while that
 * one is in service, otherwise round-robin to one that is. The suite takes a
 * gateway out of service when it kills it and puts it back once it is ready
 * again, as a health-checking balancer would (a little later in real life;
 * meanwhile clients would see refused connections and back off).
 */
export interface Target {
  name: string;
  url: string;
}

export class Balancer {
  private readonly targets: (Target & { up: boolean })[] = [];
  private cursor = 0;

  add(name: string, url: string): void {
    this.targets.push({ name, url, up: true });
  }

  setUp(name: string, up: boolean): void {
    const target = this.targets.find((t) => t.name === name);
    if (target) target.up = up;
  }

  get names(): string[] {
    return this.targets.map((t) => t.name);
  }

  /** The home gateway when it is in service, else the next one in service (or home anyway when none is). */
  pick(home: string): Target {
    const preferred = this.targets.find((t) => t.name === home);
    if (preferred?.up) return preferred;
    const up = this.targets.filter((t) => t.up);
    if (up.length === 0) return preferred ?? this.targets[0]!;
    const chosen = up[this.cursor % up.length]!;
    this.cursor += 1;
    return chosen;
  }
}
