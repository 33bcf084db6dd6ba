/** What every vmie command is: a name, its usage, its flags, and what it does. */
import type { FlagSpec, ParsedArgs } from './args';

/** Where a command writes, and the environment it runs in. */
export interface CliIo {
  readonly env: NodeJS.ProcessEnv;
  stdout(text: string): void;
  stderr(text: string): void;
}

/** Exit codes (sysexits.h where one fits). */
export const EXIT = {
  /** Inspect: the image is importable as it is. */
  OK: 0,
  /** Inspect: the image cannot be imported, even after conversion. */
  NOT_IMPORTABLE: 1,
  /** Inspect: the image is importable after conversion. */
  NEEDS_CONVERSION: 2,
  /** The command line is wrong. */
  USAGE: 64,
  /** The input cannot be opened (missing file, missing or unreadable S3 object). */
  NO_INPUT: 66,
  /** Something failed that should not have: a bug or an unexpected failure. */
  SOFTWARE: 70,
} as const;

/** A subcommand of vmie. */
export interface Command {
  readonly name: string;
  /** One line for the command list. */
  readonly summary: string;
  /** The synopsis, without the program name (`inspect <file | s3://bucket/key> [--json]`). */
  readonly synopsis: string;
  /** More lines for `vmie <command> --help`. */
  readonly description: readonly string[];
  readonly flags: Readonly<Record<string, FlagSpec>>;
  /** Runs the command; returns the exit code. Throws UsageError for command-line mistakes. */
  run(args: ParsedArgs, io: CliIo): Promise<number>;
}
