//! Run-time device choice: `auto`, `cpu`, `cuda` or `cuda:N`. candle's own
//! `cuda_if_available` only looks at the compile-time feature, so asking for
//! CUDA in a CPU build, or where no GPU answers, is a clear error here.

use candle_core::Device;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`: expected auto, cpu, cuda or cuda:N")]
    Unknown(String),
    #[error("device `{0}` needs a binary built with `--features cuda`")]
    NoCudaSupport(String),
    #[error("device `{name}` is not usable: {source}")]
    Unavailable { name: String, source: candle_core::Error },
}

/// Parses a device name and opens the device.
pub fn select_device(name: &str) -> Result<Device, DeviceError> {
    let name = name.trim();
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if cfg!(feature = "cuda") {
                Ok(Device::new_cuda(0).unwrap_or(Device::Cpu))
            } else {
                Ok(Device::Cpu)
            }
        }
        _ => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| DeviceError::Unknown(name.to_string()))?,
                None => return Err(DeviceError::Unknown(name.to_string())),
            };
            if !cfg!(feature = "cuda") {
                return Err(DeviceError::NoCudaSupport(name.to_string()));
            }
            Device::new_cuda(ordinal).map_err(|source| DeviceError::Unavailable {
                name: name.to_string(),
                source,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert!(select_device("cpu").unwrap().is_cpu());
        assert!(matches!(select_device("gpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(select_device("cuda:x"), Err(DeviceError::Unknown(_))));
        if !cfg!(feature = "cuda") {
            assert!(select_device("auto").unwrap().is_cpu());
            assert!(matches!(select_device("cuda:0"), Err(DeviceError::NoCudaSupport(_))));
        }
    }
}
