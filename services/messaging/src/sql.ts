/**
 * `text` as a SQL string literal, for values sent inside the text of a
 * multi-statement query (which takes no parameters). The escape-string form
 * means the same whatever standard_conforming_strings says; like the
 * driver's escapeLiteral, but with native replaces instead of a loop over
 * each character (these literals hold whole batches).
 */
export function sqlString(text: string): string {
  return `E'${text.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}
