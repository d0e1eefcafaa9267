// The client's version and the sidecar versions it speaks to: the range check made against the
// sidecar's GET /openapi.json `info.version` (checkCompatibility) and in error messages.

export const VERSION = "0.1.0";
/** The sidecar versions (GET /openapi.json `info.version`) this client speaks to. */
export const SUPPORTED_SIDECAR = ">=0.1.0 <0.2.0";

function parseVersion(v) {
  const m = /^(\d+)\.(\d+)\.(\d+)/.exec(String(v).trim());
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : null;
}

function compare(a, b) {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return 0;
}

/** Whether `version` satisfies a range of space-separated `>=x.y.z`, `<x.y.z` (and `>`, `<=`, `=`). */
export function satisfies(version, range = SUPPORTED_SIDECAR) {
  const v = parseVersion(version);
  if (!v) return false;
  return range.split(/\s+/).filter(Boolean).every((part) => {
    const m = /^(>=|<=|>|<|=)?(.*)$/.exec(part);
    const bound = parseVersion(m[2]);
    if (!bound) return false;
    const c = compare(v, bound);
    switch (m[1]) {
      case ">=": return c >= 0;
      case "<=": return c <= 0;
      case ">": return c > 0;
      case "<": return c < 0;
      default: return c === 0;
    }
  });
}
