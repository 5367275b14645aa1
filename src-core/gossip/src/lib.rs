//! vipvisor-gossip: speaker groups. Who is alive ([`membership`]: SWIM through foca over
//! sealed UDP), who owns each VIP ([`election`]: pure ranking), the one loop that turns
//! both into what this node announces ([`ownership`]), and static groups ([`group`]).
//!
//! Owns: membership, settledness, ownership. Must not: put frames on the wire (l2 does),
//! or read Kubernetes objects (the kube crate supplies those facts through
//! [`ownership::Facts`]).

pub mod election;
pub mod group;
pub mod membership;
pub mod ownership;
