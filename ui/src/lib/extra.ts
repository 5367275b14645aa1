// Server types that are not among the ts-rs ones (the server crate's own answers).
import type { FreeRange, OwnerSpan, Failover, Role } from "../api/types";

export type LoginAnswer = { token: string; role: Role; expires_in_s: number };
export type History = { spans: OwnerSpan[]; failovers: Failover[] };
export type { FreeRange };
