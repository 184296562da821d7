//! Maps and sets keyed by ids (regions, nodes, tables) on the heartbeat path: a million
//! regions are looked up every second, where SipHash (the std default) was the largest single
//! cost. foldhash is randomly seeded per map, so ids a datanode picks cannot be aimed at one
//! bucket run.

pub type IdMap<V> = std::collections::HashMap<u64, V, foldhash::fast::RandomState>;
pub type IdSet = std::collections::HashSet<u64, foldhash::fast::RandomState>;
