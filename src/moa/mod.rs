//! Mixture-of-Agents: recipes, reference injection with the paper's prompt, fitting references
//! into context, and the layered run itself. Talks to models only through `runtime` and
//! `model`'s text-level API; never touches candle.

pub mod agents;
pub mod fit;
pub mod plan;
pub mod prompt;
pub mod recipe;
pub mod report;
pub mod run;
pub mod staircase;

pub use recipe::{Agent, Overrides, Recipe, RecipeFile};
pub use report::{EventSink, MoaEvent, MoaReport};
pub use run::{run, RunOptions};
