//! Switches for the device code path: `MOA_GENERIC_OPS=1` runs CPU models through candle's
//! generic ops (the code a GPU runs), and `MOA_CUDA_CONCURRENCY=steps` makes concurrent
//! generations on one GPU take turns per forward step. Both exist to measure and check; the
//! defaults leave them off.

use candle_core::Device;

/// One lock per GPU: with `MOA_CUDA_CONCURRENCY=steps` concurrent generations on a GPU take turns
/// per forward step (they still interleave token by token) instead of overlapping on separate
/// streams. benches/README.md has what each gave on an H100.
pub(super) static GPU_STEP_LOCKS: [std::sync::Mutex<()>; 16] = [const { std::sync::Mutex::new(()) }; 16];

pub(super) fn step_lock_for(device: &Device) -> Option<usize> {
    let steps = std::env::var("MOA_CUDA_CONCURRENCY").is_ok_and(|v| v == "steps");
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } if steps => Some(gpu_id % GPU_STEP_LOCKS.len()),
        _ => None,
    }
}

/// `MOA_GENERIC_OPS=1`: run CPU models through candle's generic ops (the GPU code path).
pub fn generic_ops_requested() -> bool {
    std::env::var("MOA_GENERIC_OPS").is_ok_and(|v| v == "1")
}
