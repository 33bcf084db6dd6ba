/** Structured log lines of the workflow handlers: one JSON object per line. */

/** Writes `{ level, message, ...fields }` as one JSON line (CloudWatch Logs and Insights parse it). */
export function log(level: 'info' | 'warn' | 'error', message: string, fields: Record<string, unknown> = {}): void {
  const line = JSON.stringify({ level, message, ...fields });
  if (level === 'info') console.log(line);
  else if (level === 'warn') console.warn(line);
  else console.error(line);
}
