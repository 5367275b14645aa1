// Server types that are not among the ts-rs ones (the server crate's own answers).
import type { FreeRange, OwnerSpan, Failover, Role } from "../api/types";

export type LoginAnswer = { token: string; role: Role; expires_in_s: number };
export type History = { spans: OwnerSpan[]; failovers: Failover[] };
export type { FreeRange };

// The hypervisor answers (src-core/server/src/hypervisor.rs; the provider types are
// serialised as the providers define them).
export type NicRef = { vm: string; mac: string };
export type Finding = { severity: string; nic: NicRef; what: string; setting: string; current: string; fix: string };
export type NodeNic = { node: string; provider: string; nic: NicRef };
export type NodeDiagnosis = { node: string; vips: string[]; nics: NodeNic[]; findings: Finding[]; verdict: string; blocked: boolean };
export type HypervisorView = { providers: string[]; inventory: unknown[]; nodes: NodeDiagnosis[] };
export type PlannedGrant = { node: string; provider: string; vm: string; mac: string; add: string[] };
export type NicResult = { node: string; provider: string; vm: string; mac: string; vips: string[]; changed: boolean; state: string; error: string | null; remaining: Finding[] };
export type ApplyAnswer = { dry_run: boolean; vips: string[]; nodes: string[]; skipped: [string, string][]; plan: PlannedGrant[]; results: NicResult[] };
