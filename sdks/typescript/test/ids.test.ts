/** Ids: the wire form of PROTOCOL.md section 2. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { ZERO_ID, isValidId, newId } from "arqonbus";

test("new ids have the wire form, are unique and carry the time", () => {
  const ids = Array.from({ length: 1000 }, () => newId());
  assert.ok(ids.every(isValidId));
  assert.equal(new Set(ids).size, 1000);
  assert.equal(newId(0).slice(0, 14), "arq_0000000000");
  assert.equal(newId(2 ** 48 - 1).slice(4, 14), "7ZZZZZZZZZ");
  // 1 ms = the last time character.
  assert.equal(newId(1).slice(4, 14), "0000000001");
  assert.equal(newId(32).slice(4, 14), "0000000010");
  assert.throws(() => newId(2 ** 48), RangeError);
  assert.throws(() => newId(-1), RangeError);
});

test("isValidId refuses look-alikes", () => {
  assert.equal(isValidId(ZERO_ID), true);
  assert.equal(isValidId("arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P"), true);
  for (const bad of [
    "arq_01jdq8z6w3t7m5kx2c9v4b8n1p", // lower case
    "arq_01JDQ8Z6W3T7M5KX2C9V4B8NIP", // I
    "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1", // 25 characters
    "arq_81JDQ8Z6W3T7M5KX2C9V4B8N1P", // first character over 7
    "msg_01JDQ8Z6W3T7M5KX2C9V4B8N1P",
    42,
    null,
  ]) {
    assert.equal(isValidId(bad), false, String(bad));
  }
});
