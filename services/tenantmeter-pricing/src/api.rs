//! The gRPC surface: `PricingService` (internal reads) and
//! `PricingAdminService` (changes; the admin interceptor guards it).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tenantmeter_domain::pricebook::PriceBookChange;
use tenantmeter_domain::quote::{self, QuoteLine, Subject};
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::shutdown::Shutdown;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::book::PriceBookState;
use crate::convert;
use crate::error::PricingError;

/// Most quote lines (and period-to-date lines) one request may carry.
pub const MAX_QUOTE_LINES: usize = 1_000;
/// Most entries one admin upsert or assignment request may carry.
pub const MAX_BATCH: usize = 10_000;

/// Both pricing services over one replica's price book.
#[derive(Debug, Clone)]
pub struct PricingApi {
    book: Arc<PriceBookState>,
    shutdown: Shutdown,
}

impl PricingApi {
    /// Serves `book`; streams end when `shutdown` fires so the drain completes.
    pub fn new(book: Arc<PriceBookState>, shutdown: Shutdown) -> Self {
        Self { book, shutdown }
    }
}

fn check_len(field: &str, len: usize, max: usize) -> Result<(), PricingError> {
    if len > max {
        return Err(PricingError::InvalidArgument {
            field: field.to_owned(),
            reason: format!("has {len} entries; at most {max} are allowed per request"),
        });
    }
    Ok(())
}

fn quote_lines(items: &[pb::QuoteLine], field: &str) -> Result<Vec<QuoteLine>, PricingError> {
    check_len(field, items.len(), MAX_QUOTE_LINES)?;
    items
        .iter()
        .enumerate()
        .map(|(index, line)| convert::quote_line_from_proto(line, &format!("{field}[{index}]")))
        .collect()
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchPriceBookResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::pricing_service_server::PricingService for PricingApi {
    #[tracing::instrument(skip_all, fields(lines = request.get_ref().lines.len()))]
    async fn quote(
        &self,
        request: Request<pb::QuoteRequest>,
    ) -> Result<Response<pb::QuoteResponse>, Status> {
        let request = request.into_inner();
        let subject = match &request.subject {
            Some(pb::quote_request::Subject::TenantId(id)) => {
                Subject::Tenant(convert::tenant_id(id, "tenant_id")?)
            }
            Some(pb::quote_request::Subject::PlanId(id)) => {
                Subject::Plan(convert::plan_id(id, "plan_id")?)
            }
            None => Subject::DefaultPlan,
        };
        let lines = quote_lines(&request.lines, "lines")?;
        let before = quote_lines(&request.period_to_date, "period_to_date")?;
        let book = self.book.current();
        let quote = quote::quote(&book, &subject, &lines, &before).map_err(PricingError::from)?;
        let plan = book
            .plans
            .get(&quote.plan_id)
            .ok_or_else(|| PricingError::NotFound {
                resource: "plan",
                name: quote.plan_id.to_string(),
            })?;
        Ok(Response::new(convert::quote_to_proto(&quote, plan)))
    }

    async fn get_price_book(
        &self,
        _request: Request<pb::GetPriceBookRequest>,
    ) -> Result<Response<pb::GetPriceBookResponse>, Status> {
        Ok(Response::new(pb::GetPriceBookResponse {
            price_book: Some(convert::book_to_proto(&self.book.current())),
        }))
    }

    type WatchPriceBookStream = WatchStream;

    async fn watch_price_book(
        &self,
        request: Request<pb::WatchPriceBookRequest>,
    ) -> Result<Response<Self::WatchPriceBookStream>, Status> {
        let known = request.into_inner().known_version;
        let (book, mut changes) = self.book.subscribe();
        let state = Arc::clone(&self.book);
        let shutdown = self.shutdown.clone();
        let stream = async_stream::stream! {
            let mut version = book.version;
            if known != version {
                yield Ok(snapshot(&book));
            }
            loop {
                let received = tokio::select! {
                    () = shutdown.triggered() => break,
                    received = changes.recv() => received,
                };
                match received {
                    Ok(change) if change.version <= version => {}
                    Ok(change) => {
                        version = change.version;
                        yield Ok((*change).clone());
                    }
                    Err(RecvError::Lagged(missed)) => {
                        // Too slow to keep up: resynchronize with the whole book.
                        tracing::debug!(missed, "price book watcher lagged; resending the whole book");
                        let book = state.current();
                        version = book.version;
                        yield Ok(snapshot(&book));
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_tenant_plan(
        &self,
        request: Request<pb::GetTenantPlanRequest>,
    ) -> Result<Response<pb::GetTenantPlanResponse>, Status> {
        let tenant = convert::tenant_id(&request.get_ref().tenant_id, "tenant_id")?;
        let book = self.book.current();
        let (plan, is_default) = book
            .plan_of(&tenant)
            .ok_or_else(|| PricingError::NotFound {
                resource: "plan",
                name: book
                    .assignments
                    .get(&tenant)
                    .unwrap_or(&book.default_plan)
                    .to_string(),
            })?;
        Ok(Response::new(pb::GetTenantPlanResponse {
            plan: Some(convert::plan_to_proto(plan)),
            is_default,
            price_book_version: book.version,
        }))
    }
}

fn snapshot(book: &tenantmeter_domain::pricebook::PriceBook) -> pb::WatchPriceBookResponse {
    pb::WatchPriceBookResponse {
        version: book.version,
        update: Some(pb::watch_price_book_response::Update::Snapshot(
            convert::book_to_proto(book),
        )),
    }
}

#[tonic::async_trait]
impl pb::pricing_admin_service_server::PricingAdminService for PricingApi {
    async fn upsert_model_prices(
        &self,
        request: Request<pb::UpsertModelPricesRequest>,
    ) -> Result<Response<pb::UpsertModelPricesResponse>, Status> {
        let request = request.into_inner();
        check_len("prices", request.prices.len(), MAX_BATCH)?;
        if request.prices.is_empty() {
            return Err(PricingError::InvalidArgument {
                field: "prices".into(),
                reason: "list at least one price".into(),
            }
            .into());
        }
        let prices = convert::model_prices_from_proto(&request.prices, "prices")?;
        let version = self
            .book
            .apply(PriceBookChange::UpsertPrices(prices))
            .await?;
        tracing::info!(
            version,
            count = request.prices.len(),
            "list prices upserted"
        );
        Ok(Response::new(pb::UpsertModelPricesResponse { version }))
    }

    async fn upsert_plan(
        &self,
        request: Request<pb::UpsertPlanRequest>,
    ) -> Result<Response<pb::UpsertPlanResponse>, Status> {
        let Some(plan) = request.into_inner().plan else {
            return Err(PricingError::InvalidArgument {
                field: "plan".into(),
                reason: "is required".into(),
            }
            .into());
        };
        let plan = convert::plan_from_proto(&plan, "plan")?;
        let id = plan.id.clone();
        let version = self.book.apply(PriceBookChange::UpsertPlan(plan)).await?;
        tracing::info!(version, plan = %id, "plan upserted");
        Ok(Response::new(pb::UpsertPlanResponse { version }))
    }

    async fn assign_plans(
        &self,
        request: Request<pb::AssignPlansRequest>,
    ) -> Result<Response<pb::AssignPlansResponse>, Status> {
        let request = request.into_inner();
        check_len("assignments", request.assignments.len(), MAX_BATCH)?;
        let assignments = convert::assignments_from_proto(&request.assignments, "assignments")?;
        let version = self
            .book
            .apply(PriceBookChange::AssignPlans(assignments))
            .await?;
        tracing::info!(version, count = request.assignments.len(), "plans assigned");
        Ok(Response::new(pb::AssignPlansResponse { version }))
    }
}
