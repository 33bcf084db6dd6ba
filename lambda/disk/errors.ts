/**
 * Typed errors of the disk engine. Each has a stable `name`, which the Lambda handlers pass on so
 * that the state machine can catch or retry by name, and a `code` for finer distinctions.
 */

/** The bytes could not be read as far as the structure says (truncation, I/O). */
export class ImageReadError extends Error {
  public constructor(message: string, public readonly code: string = 'READ_FAILED') {
    super(message);
    this.name = 'ImageReadError';
  }
}

/**
 * The image's structure is damaged or lies: a table out of range, a bad checksum that makes the
 * data untrustworthy, an absurd count. Parsers throw this instead of reading without bound.
 */
export class ImageFormatError extends Error {
  public constructor(message: string, public readonly code: string = 'MALFORMED') {
    super(message);
    this.name = 'ImageFormatError';
  }
}

/** What could be learned of an image that cannot be read. */
export interface UnsupportedImageInfo {
  readonly format?: string;
  readonly subformat?: string;
  readonly virtualSize?: number;
}

/**
 * The input is recognised but its virtual bytes cannot be read here (descriptor-only or split
 * VMDK, seSparse, an encrypted qcow2, …). `code` is the finding code from the catalogue
 * (`findings.ts`) that explains it, and `info` what was learned on the way.
 */
export class UnsupportedImageError extends Error {
  public constructor(
    message: string,
    public readonly code: string = 'UNSUPPORTED',
    public readonly info: UnsupportedImageInfo = {},
  ) {
    super(message);
    this.name = 'UnsupportedImage';
  }
}
