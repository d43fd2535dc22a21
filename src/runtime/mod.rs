//! Runtime: devices, the set of loaded models, and blocking generation workers driven from
//! async code. The MoA layer asks it for models by name and for generations; it decides where
//! the work runs. (Memory-aware placement and waves live in `scheduler`.)

pub mod batcher;
pub mod device;
pub mod estimate;
pub mod pool;
pub mod prefill;
pub mod prefix_store;
pub mod remote;
pub mod scheduler;

pub use device::DeviceSpec;
pub use pool::{LoadedInfo, Runtime};
