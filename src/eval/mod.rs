//! Evaluation of models and MoA recipes on the suites of the MoA paper, offline: IFEval (scored
//! by code), MT-Bench and AlpacaEval-style pairwise (scored by a local judge model).

pub mod alpaca;
pub mod answers;
pub mod data;
pub mod ifeval;
pub mod ifeval_suite;
pub mod judge;
pub mod mtbench;
pub mod perplexity;
pub mod report;
pub mod run;
pub mod stats;
pub mod system;
