//! rtmanager's Temporal workflows: deterministic orchestration only.
//!
//! This crate holds no adapters (no tokio I/O, bollard, redis or diesel): each side effect is an
//! activity whose contract — name, input and output — lives in [`contract`] and whose
//! implementation lives in `rtmanager-activities`. Workflows parse their own raw input
//! ([`support::request_bytes`]) so bad input completes with `invalid_request` instead of
//! looping on workflow-task failures.
//!
//! Callers: the worker (`rtmanager worker`) registers the workflows; clients start them by the
//! names pinned in `#[run(name = ...)]`.

#![warn(missing_docs)]

/// The struct, factory, `run` and `progress` query every lifecycle workflow shares: `$body`
/// runs with `$op`, the operation (an [`operation::Op`] whose progress the query reports), and
/// `$input`, the raw input.
macro_rules! lifecycle_workflow {
    (
        $(#[$doc:meta])*
        $workflow:ident($name:literal, $kind:expr): $parse:path,
        $input_doc:literal $(,)?
    ) => {
        $(#[$doc])*
        #[temporalio_macros::workflow]
        #[derive(Default)]
        pub struct $workflow {
            settings: $crate::StepSettings,
            progress: $crate::progress::Progress,
        }

        impl $workflow {
            /// The workflow as the worker's factory builds it, with the worker's step options.
            pub fn new(settings: $crate::StepSettings) -> Self {
                Self {
                    settings,
                    progress: Default::default(),
                }
            }
        }

        // `#[workflow_methods]` generates an undocumented constant per method; it copies each
        // method's `#[allow]` attributes onto it, hence `allow(missing_docs)` on documented ones.
        #[temporalio_macros::workflow_methods]
        impl $workflow {
            #[doc = $input_doc]
            #[allow(missing_docs)]
            #[run(name = $name)]
            pub async fn run(
                ctx: &mut temporalio_workflow::WorkflowContext<Self>,
                input: temporalio_workflow::common::data_converters::RawValue,
            ) -> temporalio_workflow::WorkflowResult<rtmanager_domain::OperationOutput> {
                let settings = ctx.state(|s| s.settings.clone());
                let report = |w: &mut Self, p: &$crate::progress::Progress| w.progress = p.clone();
                let mut op = $crate::operation::Op::new(ctx, &settings, $kind, report);
                Ok(match op.parse(&input, $parse).await {
                    Ok(request) => op.handle(request).await,
                    Err(output) => output,
                })
            }

            /// Where the operation is: its step, host, container, fence and child in flight.
            #[allow(missing_docs)]
            #[query(name = "progress")]
            pub fn progress(
                &self,
                _ctx: &temporalio_workflow::WorkflowContextView,
            ) -> $crate::progress::Progress {
                self.progress.clone()
            }
        }
    };
}

pub mod contract;
pub mod operation;
pub mod progress;
pub mod reconcile;
pub mod replace;
pub mod settings;
pub mod start;
pub mod stop;
pub mod support;

pub use reconcile::{ReconcileHostWorkflow, ReconcileReport};
pub use replace::{PatchRuntimeWorkflow, RestartRuntimeWorkflow};
pub use settings::StepSettings;
pub use start::StartRuntimeWorkflow;
pub use stop::StopRuntimeWorkflow;
