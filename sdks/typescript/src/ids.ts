/**
 * Message ids: `arq_` + a ULID (PROTOCOL.md section 2).
 *
 * A ULID is 128 bits: a 48-bit millisecond Unix timestamp followed by 80
 * random bits, written as 26 characters of Crockford base32 in upper case.
 */

const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const ID_RE = /^arq_[0-7][0-9A-HJKMNP-TV-Z]{25}$/;

/**
 * The smallest possible id. No real message has it, so `join_channel` with
 * `since: ZERO_ID` replays everything the channel still keeps.
 */
export const ZERO_ID = "arq_" + "0".repeat(26);

/** Returns a fresh `arq_` + ULID id (the current time unless given). */
export function newId(timestampMs: number = Date.now()): string {
  if (!Number.isInteger(timestampMs) || timestampMs < 0 || timestampMs >= 2 ** 48) {
    throw new RangeError(`timestamp out of the 48-bit range: ${timestampMs}`);
  }
  // 10 time characters (50 bits, the top 2 always zero) then 16 random
  // characters (80 bits, 5 per character).
  let time = "";
  let ms = timestampMs;
  for (let i = 0; i < 10; i++) {
    time = ALPHABET[ms % 32] + time;
    ms = Math.floor(ms / 32);
  }
  const random = new Uint8Array(16);
  globalThis.crypto.getRandomValues(random);
  let rand = "";
  for (const byte of random) rand += ALPHABET[byte & 31];
  return "arq_" + time + rand;
}

/** Whether `value` has the exact wire form of an id. */
export function isValidId(value: unknown): value is string {
  return typeof value === "string" && ID_RE.test(value);
}
