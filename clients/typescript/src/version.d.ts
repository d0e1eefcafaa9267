// Types of version.js: the client's version and the sidecar versions it speaks to.

export declare const VERSION: string;
export declare const SUPPORTED_SIDECAR: string;
export declare function satisfies(version: string, range?: string): boolean;
