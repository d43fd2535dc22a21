//! Devices: parsing `cpu`, `cuda:N`, `metal`, opening them through candle, and reading how much
//! memory each has free (CUDA: the driver's free/total; CPU: MemAvailable; Metal: the recommended
//! working set). Builds without the matching cargo feature say so instead of failing obscurely.

use candle_core::Device;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    Metal,
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::Metal => write!(f, "metal"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "metal" | "mps" => Ok(DeviceSpec::Metal),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => match t.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceSpec::Cuda).map_err(|_| bad_device(s)),
                None => Err(bad_device(s)),
            },
        }
    }
}

fn bad_device(s: &str) -> Error {
    Error::InvalidRequest(format!("unknown device `{s}` (expected cpu, cuda, cuda:N or metal)"))
}

/// How work on one CUDA device is spread over streams (`MOA_CUDA_STREAMS`):
/// - `model` (default): every loaded model has its own candle device handle — its own stream and
///   cuBLAS handle — so concurrent models overlap on the GPU and share no buffer;
/// - `shared`: one stream for everything on the device (work of concurrent models serializes).
///
/// candle's per-thread default stream (once the default) is not offered: two models decoding at
/// once on it wrote different tokens than alone (`cuda_concurrent_models_match_their_solo_runs`,
/// H200, benches/README.md). Not traced further; the likely causes are the one cuBLAS handle (and
/// workspace) every model then shares, and buffers freed on another thread's stream than the one
/// still using them.
/// Measured with 3 concurrent proposers in benches/README.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaStreams {
    PerModel,
    Shared,
}

impl CudaStreams {
    pub fn from_env() -> Result<Self> {
        match std::env::var("MOA_CUDA_STREAMS").as_deref() {
            Err(_) | Ok("") | Ok("model") => Ok(Self::PerModel),
            Ok("shared") => Ok(Self::Shared),
            Ok(other) => Err(Error::InvalidRequest(format!("MOA_CUDA_STREAMS={other}: expected model or shared"))),
        }
    }
}

impl DeviceSpec {
    /// The device a model is loaded on, given the runtime's `shared` one: on CUDA (unless
    /// `MOA_CUDA_STREAMS=shared`) a new handle with its own stream, otherwise `shared` itself.
    pub fn open_for_model(&self, shared: &Device) -> Result<Device> {
        match self {
            DeviceSpec::Cuda(_) if CudaStreams::from_env()? == CudaStreams::PerModel => self.open(),
            _ => Ok(shared.clone()),
        }
    }

    /// Open the device through candle.
    pub fn open(&self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(i) => {
                if !cfg!(feature = "cuda") {
                    return Err(Error::InvalidRequest(format!(
                        "device {self} requested but this build has no CUDA support (rebuild with `cargo build --release --features cuda`)"
                    )));
                }
                // Every handle gets its own stream: with `model` each model opens its own, with
                // `shared` the runtime's one handle is the only one models use.
                let d = Device::new_cuda_with_stream(*i).map_err(Error::candle(format!("opening {self}")))?;
                cuda_host_cost::tune(&d, self)?;
                Ok(d)
            }
            DeviceSpec::Metal => {
                if !cfg!(feature = "metal") {
                    return Err(Error::InvalidRequest(format!(
                        "device {self} requested but this build has no Metal support (rebuild with `cargo build --release --features metal`)"
                    )));
                }
                Device::new_metal(0).map_err(Error::candle(format!("opening {self}")))
            }
        }
    }

    /// Bytes free on the device now, as the device reports it.
    pub fn free_memory(&self) -> Result<u64> {
        match self {
            DeviceSpec::Cpu => cpu_available_memory(),
            DeviceSpec::Cuda(_) => cuda_free_memory(self),
            DeviceSpec::Metal => metal_free_memory(self),
        }
    }
}

/// MemAvailable from /proc/meminfo (Linux), in bytes.
pub fn cpu_available_memory() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|source| Error::Io { path: "/proc/meminfo".into(), source })?;
    parse_meminfo(&text, "MemAvailable:")
        .ok_or_else(|| Error::Other("/proc/meminfo has no MemAvailable line; pass --memory-budget".into()))
}

fn parse_meminfo(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Metal: the device's recommended working set less what is allocated on it now.
#[cfg(feature = "metal")]
fn metal_free_memory(spec: &DeviceSpec) -> Result<u64> {
    let dev = spec.open()?;
    let Device::Metal(metal) = &dev else {
        return Err(Error::Other(format!("{spec} did not open as a Metal device")));
    };
    let d = metal.device();
    Ok(d.recommended_max_working_set_size().saturating_sub(d.current_allocated_size()) as u64)
}

#[cfg(not(feature = "metal"))]
fn metal_free_memory(spec: &DeviceSpec) -> Result<u64> {
    Err(Error::InvalidRequest(format!(
        "device {spec} requested but this build has no Metal support (rebuild with `cargo build --release --features metal`)"
    )))
}

#[cfg(feature = "cuda")]
fn cuda_free_memory(spec: &DeviceSpec) -> Result<u64> {
    let dev = spec.open()?;
    let cuda = dev.as_cuda_device().map_err(Error::candle("reading CUDA memory"))?;
    let _ = cuda; // bind the context of this device before asking the driver
    let (free, _total) = candle_core::cuda::cudarc::driver::result::mem_get_info()
        .map_err(|e| Error::Other(format!("cuMemGetInfo on {spec}: {e}")))?;
    Ok(free as u64)
}

#[cfg(not(feature = "cuda"))]
fn cuda_free_memory(spec: &DeviceSpec) -> Result<u64> {
    spec.open().map(|_| 0)
}

/// Per-op host cost on CUDA (#24): candle creates two CUDA events with every allocation for
/// cudarc's cross-stream tracking, and records and waits on them around every op once a context
/// has more than one stream. Here a tensor is only ever used on the stream of the handle it was
/// made on (a model's weights, caches and activations all live on that model's handle; nothing
/// on the device passes between models), so the tracking only costs: it is switched off at open
/// (`MOA_CUDA_EVENTS=on` keeps it, for measuring: 7.0 against 5.8 ms of host time per decoded
/// token of a 7B model on an H200, benches/README.md).
#[cfg(feature = "cuda")]
mod cuda_host_cost {
    use candle_core::Device;

    use super::DeviceSpec;
    use crate::error::{Error, Result};

    pub(super) fn tune(dev: &Device, spec: &DeviceSpec) -> Result<()> {
        let cuda = dev.as_cuda_device().map_err(Error::candle(format!("opening {spec}")))?;
        if std::env::var("MOA_CUDA_EVENTS").as_deref() != Ok("on") {
            // SAFETY: every tensor made from this handle is used on its one stream only (see
            // above), so no cross-stream synchronisation is needed; tensors made from now on
            // just skip creating and recording events.
            unsafe { cuda.disable_event_tracking() };
        }
        Ok(())
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda_host_cost {
    pub(super) fn tune(_: &candle_core::Device, _: &super::DeviceSpec) -> crate::error::Result<()> {
        Ok(())
    }
}

/// Parse a memory size like `8GiB`, `512MiB`, `6G`, `1.5GB` or a byte count.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| Error::InvalidRequest(format!("bad memory size `{s}` (e.g. 8GiB, 512MiB)")))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0f64.powi(4),
        _ => return Err(Error::InvalidRequest(format!("bad memory unit in `{s}` (use B, KiB, MiB, GiB)"))),
    };
    Ok((n * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_sizes() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert!("tpu".parse::<DeviceSpec>().unwrap_err().to_string().contains("tpu"));
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_meminfo("MemTotal: 10 kB\nMemAvailable:    2048 kB\n", "MemAvailable:"), Some(2 << 20));
        assert!(cpu_available_memory().unwrap() > 0);
    }

    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        if !cfg!(feature = "cuda") {
            let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
