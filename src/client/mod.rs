//! The library that datanodes, frontends and tools use to talk to metasrv: connection helpers
//! and the frontend's [`MetaClient`] (leader discovery, route cache, row splitting).

pub mod heartbeat;
pub mod meta_client;

pub use heartbeat::{HeartbeatLink, LinkEvent, MetasrvTarget};
pub use meta_client::{
    find_leader, select_endpoints, CachedRoute, ClientError, EndpointBatch, MetaClient,
    ReadPriority, RegionBatch,
};

use tonic::transport::{Channel, Endpoint};

use crate::proto::v1::store_client::StoreClient;
use crate::proto::v1::RequestHeader;

/// Opens a channel to a metasrv at `addr` (`host:port` or a full `http://` URI).
pub async fn connect(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(uri)?
        .connect_timeout(std::time::Duration::from_secs(3))
        .tcp_nodelay(true)
        .connect()
        .await
}

/// A Store client on `channel`.
pub fn store_client(channel: Channel) -> StoreClient<Channel> {
    StoreClient::new(channel)
}

/// The header to put on every request to a metasrv of `cluster_id`.
pub fn header(cluster_id: u64, member_id: u64) -> Option<RequestHeader> {
    Some(RequestHeader {
        cluster_id,
        member_id,
    })
}
