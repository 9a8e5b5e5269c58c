//! `--device cpu|cuda[:N]`: which device a model, a training run or a server uses.
//!
//! `cpu` always works. `cuda` (device 0) and `cuda:N` need a build whose candle has its CUDA
//! backend and a GPU at run time; otherwise the error says which of the two is missing, so a
//! command refuses before loading anything instead of failing (or panicking) later.

use candle_core::Device;

use crate::error::{Error, Result};

/// The device named by `spec`: `cpu`, `cuda` (device 0) or `cuda:N`.
///
/// # Errors
/// [`Error::Config`] for a spec that is none of these, for a CUDA device when this build's
/// candle has no CUDA backend, and for a CUDA device the driver cannot open (no GPU, or no
/// device N).
pub fn parse_device(spec: &str) -> Result<Device> {
    let s = spec.trim();
    let ordinal = match s {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => match s.strip_prefix("cuda:") {
            Some(n) => n.parse::<usize>().map_err(|_| {
                Error::Config(format!(
                    "device {spec:?}: the GPU index after `cuda:` must be a whole number"
                ))
            })?,
            None => {
                return Err(Error::Config(format!(
                    "device {spec:?}: expected cpu, cuda or cuda:N"
                )));
            }
        },
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Config(format!(
            "device {spec:?}: this build of qattn has no CUDA backend for models (candle was \
             compiled without CUDA); use --device cpu"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        Error::Config(format!(
            "device {spec:?}: cannot open CUDA device {ordinal}: {e}"
        ))
    })
}

/// The spec of `device` (`cpu`, `cuda:N`, or candle's name for other devices).
pub fn device_spec(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_owned(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_bad_specs_are_named() {
        assert!(matches!(parse_device("cpu").unwrap(), Device::Cpu));
        assert!(matches!(parse_device(" cpu ").unwrap(), Device::Cpu));
        assert_eq!(device_spec(&Device::Cpu), "cpu");
        for (bad, want) in [
            ("gpu", "expected cpu, cuda or cuda:N"),
            ("cuda:x", "whole number"),
            ("cuda:-1", "whole number"),
            ("", "expected cpu"),
        ] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    /// Without candle's CUDA backend a CUDA device is refused with the reason; with it, a GPU
    /// index the machine does not have is refused naming the index. Never a panic.
    #[test]
    fn unavailable_cuda_devices_are_clear_errors() {
        if candle_core::utils::cuda_is_available() {
            let e = parse_device("cuda:999").unwrap_err().to_string();
            assert!(e.contains("cannot open CUDA device 999"), "{e}");
        } else {
            for spec in ["cuda", "cuda:0", "cuda:3"] {
                let e = parse_device(spec).unwrap_err().to_string();
                assert!(e.contains("no CUDA backend"), "{spec}: {e}");
            }
        }
    }
}
