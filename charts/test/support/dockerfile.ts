import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { repoRoot } from './paths';

export interface Instruction {
  keyword: string;
  /** The text after the keyword, continuation lines joined. */
  args: string;
  /** Flags such as --from=build or --chown=…, by name. */
  flags: Record<string, string>;
  /** The arguments without flags, split on whitespace (or the JSON array's items). */
  words: string[];
  json: string[] | undefined;
}

export interface Stage {
  from: string;
  name: string | undefined;
  instructions: Instruction[];
}

export interface Dockerfile {
  /** ARGs declared before the first FROM, with their defaults. */
  globalArgs: Record<string, string>;
  stages: Stage[];
}

/** Parses a Dockerfile: comments dropped, continuation lines joined, exec-form arrays decoded. */
export function parseDockerfile(text: string): Dockerfile {
  const logical: string[] = [];
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    if (/^\s*#/.test(line)) continue;
    if (line.endsWith('\\')) {
      current += `${line.slice(0, -1)} `;
      continue;
    }
    current += line;
    if (current.trim()) logical.push(current.trim());
    current = '';
  }
  const result: Dockerfile = { globalArgs: {}, stages: [] };
  for (const line of logical) {
    const match = /^(\w+)\s+([\s\S]*)$/.exec(line);
    if (!match) throw new Error(`cannot parse Dockerfile line: ${line}`);
    const keyword = match[1]!.toUpperCase();
    const args = match[2]!.trim();
    const flags: Record<string, string> = {};
    let rest = args;
    for (let flag = /^--([\w-]+)(?:=(\S+))?\s+/.exec(rest); flag; flag = /^--([\w-]+)(?:=(\S+))?\s+/.exec(rest)) {
      flags[flag[1]!] = flag[2] ?? 'true';
      rest = rest.slice(flag[0].length);
    }
    let json: string[] | undefined;
    const jsonPart = keyword === 'HEALTHCHECK' ? /CMD\s+(\[.*\])$/.exec(rest)?.[1] : rest.startsWith('[') ? rest : undefined;
    if (jsonPart) json = JSON.parse(jsonPart) as string[];
    const instruction: Instruction = { keyword, args, flags, words: rest.split(/\s+/).filter(Boolean), json };
    if (keyword === 'FROM') {
      const [from, as, name] = instruction.words;
      result.stages.push({ from: from!, name: as?.toUpperCase() === 'AS' ? name : undefined, instructions: [] });
    } else if (result.stages.length === 0) {
      if (keyword === 'ARG') {
        const [name, value] = rest.split('=');
        result.globalArgs[name!] = value ?? '';
      }
    } else {
      result.stages.at(-1)!.instructions.push(instruction);
    }
  }
  return result;
}

export function readDockerfile(service: string): Dockerfile {
  return parseDockerfile(fs.readFileSync(path.join(repoRoot, 'services', service, 'Dockerfile'), 'utf8'));
}

/** `${NAME}` and `$NAME` replaced by the given values. */
export function expand(text: string, vars: Record<string, string>): string {
  return text.replace(/\$\{(\w+)\}|\$(\w+)/g, (whole, a: string | undefined, b: string | undefined) => vars[(a ?? b)!] ?? whole);
}

/** The ENV of a stage (both `ENV A=1 B=2` and `ENV A 1`). */
export function stageEnv(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const i of stage.instructions.filter((x) => x.keyword === 'ENV')) {
    if (i.args.includes('=')) for (const [, k, v] of i.args.matchAll(/(\w+)=("[^"]*"|\S+)/g)) env[k!] = v!.replace(/^"|"$/g, '');
    else env[i.words[0]!] = i.words.slice(1).join(' ');
  }
  return env;
}

/** The .dockerignore rules, as Docker applies them (Go filepath.Match with **, later rules win, ! re-includes). */
export function dockerignore(): (file: string) => boolean {
  const file = path.join(repoRoot, '.dockerignore');
  const rules = fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const negate = l.startsWith('!');
      const pattern = path.posix.normalize((negate ? l.slice(1) : l).replace(/^\/+/, '')).replace(/\/+$/, '');
      const source = pattern
        .split('/')
        .map((part) => (part === '**' ? '.*' : part.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')))
        .join('/')
        .replace(/\.\*\//g, '(?:.*/)?');
      return { negate, regex: new RegExp(`^${source}(?:/.*)?$`) };
    });
  return (candidate: string) => {
    let excluded = false;
    for (const rule of rules) if (rule.regex.test(candidate)) excluded = !rule.negate;
    return excluded;
  };
}

/** The build context of a clean checkout: the files git knows (tracked, or new and not ignored) that .dockerignore keeps. */
export function contextFiles(): string[] {
  const listed = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard'], { cwd: repoRoot, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  const ignored = dockerignore();
  return listed
    .split('\n')
    .filter(Boolean)
    .filter((f) => fs.existsSync(path.join(repoRoot, f)) && !ignored(f));
}
