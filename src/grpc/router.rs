//! The `Router` gRPC service over the `TableManager`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{instrumented, RequestLimits};
use crate::catalog::manager::CreateTable;
use crate::catalog::model::{route_to_pb, TableName};
use crate::catalog::TableManager;
use crate::election::Leadership;
use crate::metrics::Metrics;
use crate::proto::v1::{self as pb, router_server::Router};

pub use crate::proto::v1::router_server::RouterServer;

const SERVICE: &str = "Router";

pub struct RouterService {
    tables: Arc<TableManager>,
    leadership: Arc<Leadership>,
    limits: RequestLimits,
    metrics: Arc<Metrics>,
}

impl RouterService {
    pub fn new(
        tables: Arc<TableManager>,
        leadership: Arc<Leadership>,
        limits: RequestLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            tables,
            leadership,
            limits,
            metrics,
        }
    }
}

fn table_name(name: Option<pb::TableName>) -> Result<TableName, Status> {
    name.map(Into::into)
        .ok_or_else(|| Status::invalid_argument("table_name is missing"))
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn create_catalog(
        &self,
        request: Request<pb::CreateCatalogRequest>,
    ) -> Result<Response<pb::CreateCatalogResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "CreateCatalog", async {
            self.limits.check_header(req.header.as_ref())?;
            self.leadership.require_leader()?;
            let created = self
                .tables
                .create_catalog(&req.name, req.if_not_exists)
                .await?;
            Ok(pb::CreateCatalogResponse {
                header: self.limits.response_header(),
                created,
            })
        })
        .await
    }

    async fn list_catalogs(
        &self,
        request: Request<pb::ListCatalogsRequest>,
    ) -> Result<Response<pb::ListCatalogsResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "ListCatalogs", async {
            self.limits.check_header(req.header.as_ref())?;
            self.leadership.require_leader()?;
            Ok(pb::ListCatalogsResponse {
                header: self.limits.response_header(),
                names: self.tables.list_catalogs(),
            })
        })
        .await
    }

    async fn create_schema(
        &self,
        request: Request<pb::CreateSchemaRequest>,
    ) -> Result<Response<pb::CreateSchemaResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "CreateSchema", async {
            self.limits.check_header(req.header.as_ref())?;
            self.leadership.require_leader()?;
            let created = self
                .tables
                .create_schema(&req.catalog, &req.name, req.if_not_exists)
                .await?;
            Ok(pb::CreateSchemaResponse {
                header: self.limits.response_header(),
                created,
            })
        })
        .await
    }

    async fn list_schemas(
        &self,
        request: Request<pb::ListSchemasRequest>,
    ) -> Result<Response<pb::ListSchemasResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "ListSchemas", async {
            self.limits.check_header(req.header.as_ref())?;
            self.leadership.require_leader()?;
            Ok(pb::ListSchemasResponse {
                header: self.limits.response_header(),
                names: self.tables.list_schemas(&req.catalog)?,
            })
        })
        .await
    }

    async fn create_table(
        &self,
        request: Request<pb::CreateTableRequest>,
    ) -> Result<Response<pb::CreateTableResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "CreateTable", async {
            self.limits.check_header(req.header.as_ref())?;
            self.leadership.require_leader()?;
            self.limits.check_size(prost::Message::encoded_len(&req))?;
            let request = CreateTable::from_pb(req).map_err(Status::invalid_argument)?;
            let (created, entry) = self.tables.create_table(request).await?;
            Ok(pb::CreateTableResponse {
                header: self.limits.response_header(),
                created,
                route: Some(route_to_pb(&entry.info, &entry.route)),
            })
        })
        .await
    }

    async fn drop_table(
        &self,
        request: Request<pb::DropTableRequest>,
    ) -> Result<Response<pb::DropTableResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "DropTable", async {
            self.limits.check_header(req.header.as_ref())?;
            self.leadership.require_leader()?;
            let name = table_name(req.table_name)?;
            let dropped = self.tables.drop_table(&name, req.if_exists).await?;
            Ok(pb::DropTableResponse {
                header: self.limits.response_header(),
                dropped,
            })
        })
        .await
    }

    async fn route(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "Route", async {
            self.limits.check_header(req.header.as_ref())?;
            self.limits.check_batch(req.table_names.len())?;
            let names: Vec<TableName> = req.table_names.into_iter().map(Into::into).collect();
            // The leader answers from memory; a follower reads the KV (consistent reads on etcd).
            let entries = if self.leadership.is_serving_leader() {
                self.tables.routes(&names)?
            } else {
                self.tables.routes_from_store(&names).await?
            };
            Ok(pb::RouteResponse {
                header: self.limits.response_header(),
                routes: entries
                    .iter()
                    .map(|e| route_to_pb(&e.info, &e.route))
                    .collect(),
            })
        })
        .await
    }
}
