//! Which device the tensors live on: the CPU (burn's `flex` backend, the default) or a CUDA GPU
//! (burn's CUDA backend, in a build with the `cuda` feature). Everything above this is written
//! against burn's `Device`, so the interpreter, both detectors, stage 2 and training run on
//! either unchanged.

use std::fmt;
use std::str::FromStr;

use burn::prelude::Device;

use crate::error::{Error, Result};

/// A compute device as the user names it: `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// burn's `flex` CPU backend, on all cores.
    #[default]
    Cpu,
    /// The CUDA GPU of this index.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => match t.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(Error::Config(format!(
                    "device '{s}': expected cpu, cuda or cuda:N (N the GPU's index)"
                ))),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this build has the CUDA backend (the `cuda` feature).
pub fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

impl DeviceChoice {
    /// The burn device, with autodiff or without, after checking that it can be used: a CUDA
    /// device needs the `cuda` feature, the NVIDIA driver (`libcuda`), NVRTC (`libnvrtc`, with
    /// which the backend compiles its kernels) and a GPU of that index, and must run a first
    /// operation. Each failure is one [`Error::Device`] naming what is missing.
    pub fn device(self, autodiff: bool) -> Result<Device> {
        let d = match self {
            DeviceChoice::Cpu => Device::flex(),
            DeviceChoice::Cuda(n) => cuda_device(n, self)?,
        };
        Ok(if autodiff { d.autodiff() } else { d })
    }
}

/// What a device is, for reports: `cpu (flex, N threads)` for the CPU backend, `cuda:N (CubeCL,
/// float32 matrix products)` or `... TF32 ...` for a CUDA device ([`matmul_precision`]),
/// otherwise burn's own description of it.
pub fn device_label(d: &Device) -> String {
    let s = format!("{d:?}");
    if let Some(label) = cuda_label(&s) {
        label
    } else if s.contains("Flex") {
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        format!("cpu (flex, {threads} threads)")
    } else {
        s
    }
}

/// Whether `d` is an accelerator (a CUDA GPU) rather than the CPU backend: there one batch
/// beats several threads' smaller ones.
pub fn is_accelerator(d: &Device) -> bool {
    cuda_label(&format!("{d:?}")).is_some()
}

/// `cuda:N (CubeCL, PRECISION)` from burn's Debug form of a CUDA device,
/// `Device<Autodiff { device: Cube(Cuda(Cuda(N))), .. }>`; `None` for any other device.
fn cuda_label(debug: &str) -> Option<String> {
    let i = debug.find("Cuda(Cuda(")?;
    let index: String = debug[i + "Cuda(Cuda(".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let precision = matmul_precision(
        option_env!("CEPA_CUDA_TF32_SWITCH").is_some(),
        std::env::var_os("CEPA_CUDA_TF32").as_deref(),
    );
    (!index.is_empty()).then(|| format!("cuda:{index} (CubeCL, {precision})"))
}

/// How the CUDA backend multiplies float32 matrices (matmul and the convolutions built on it).
/// CubeCL 0.11.3 runs them on the tensor cores in TF32 (10-bit mantissa) wherever the GPU has
/// them (compute capability 8.0 on), which put the logits and input gradients 7e-5 to 3e-3 of the largest value from the CPU's
/// (BENCHMARKS.md, "On a GPU"). `scripts/device/build_cuda.sh` builds CubeCL so that it
/// declares TF32 only when `CEPA_CUDA_TF32=1` is set at run time (and marks the binary with
/// `CEPA_CUDA_TF32_SWITCH`): float32 products by default, TF32 on request. A build without the
/// switch (plain `cargo build --features cuda`) always uses TF32 where it can.
fn matmul_precision(switch_built: bool, tf32_env: Option<&std::ffi::OsStr>) -> &'static str {
    match (switch_built, tf32_env.is_some_and(|v| v == "1")) {
        (false, _) => "TF32 matrix products where the GPU has them",
        (true, true) => "TF32 matrix products, CEPA_CUDA_TF32=1",
        (true, false) => "float32 matrix products",
    }
}

fn device_error(choice: DeviceChoice, msg: impl Into<String>) -> Error {
    Error::Device {
        device: choice.to_string(),
        msg: msg.into(),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_index: usize, choice: DeviceChoice) -> Result<Device> {
    Err(device_error(
        choice,
        "this build has no CUDA backend; rebuild with `cargo build --release --features cuda` \
         (in crates/cepa-cli or crates/cepa-py), or with scripts/device/build_cuda.sh where \
         github.com is out of reach; an NVIDIA driver and NVRTC are then needed at run time",
    ))
}

#[cfg(feature = "cuda")]
fn cuda_device(index: usize, choice: DeviceChoice) -> Result<Device> {
    use burn::prelude::{Tensor, TensorData};

    let driver = cuda_probe::open(&["libcuda.so.1", "libcuda.so"]).ok_or_else(|| {
        device_error(
            choice,
            "no NVIDIA driver: libcuda.so.1 cannot be loaded (install the driver, or add its \
             folder to LD_LIBRARY_PATH)",
        )
    })?;
    let count = cuda_probe::device_count(driver).map_err(|m| device_error(choice, m))?;
    if index >= count {
        return Err(device_error(
            choice,
            format!("no GPU of index {index}: the driver reports {count}"),
        ));
    }
    let nvrtc = [
        "libnvrtc.so",
        "libnvrtc.so.13",
        "libnvrtc.so.12",
        "libnvrtc.so.11.2",
        "libnvrtc.so.11",
    ];
    if cuda_probe::open(&nvrtc).is_none() {
        return Err(device_error(
            choice,
            "NVRTC (libnvrtc.so), with which the CUDA backend compiles its kernels, cannot be \
             loaded: install the CUDA toolkit's nvrtc package, or add its folder to \
             LD_LIBRARY_PATH",
        ));
    }
    let device = Device::cuda(index);
    // The backend panics on a failure deep inside; one small operation turns that into an error.
    let probe = device.clone();
    let first = std::panic::catch_unwind(move || {
        let t = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0], [3]), &probe);
        t.sum().into_scalar::<f32>()
    });
    match first {
        Ok(v) if (v - 6.0).abs() < 1e-6 => Ok(device),
        Ok(v) => Err(device_error(
            choice,
            format!("a first operation gave {v} instead of 6: the device does not compute right"),
        )),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(device_error(
                choice,
                format!("the first operation failed: {}", msg.replace('\n', " ")),
            ))
        }
    }
}

/// The driver API, loaded by hand, to say what is missing before the backend panics on it.
#[cfg(feature = "cuda")]
mod cuda_probe {
    use std::ffi::CString;

    /// The first of `names` that `dlopen` loads (the handle is kept open for the process).
    pub fn open(names: &[&str]) -> Option<*mut libc::c_void> {
        names.iter().find_map(|n| {
            let c = CString::new(*n).ok()?;
            // SAFETY: dlopen with a valid C string; a null handle is checked.
            let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            (!h.is_null()).then_some(h)
        })
    }

    /// `cuInit(0)` then `cuDeviceGetCount`.
    pub fn device_count(lib: *mut libc::c_void) -> Result<usize, String> {
        type Init = unsafe extern "C" fn(u32) -> i32;
        type Count = unsafe extern "C" fn(*mut i32) -> i32;
        let sym = |name: &str| {
            let c = CString::new(name).expect("no NUL");
            // SAFETY: a valid handle from dlopen and a valid C string.
            let p = unsafe { libc::dlsym(lib, c.as_ptr()) };
            (!p.is_null())
                .then_some(p)
                .ok_or_else(|| format!("the driver library has no {name}"))
        };
        // SAFETY: the symbols are the driver API's, with these C signatures.
        let init: Init = unsafe { std::mem::transmute(sym("cuInit")?) };
        let count: Count = unsafe { std::mem::transmute(sym("cuDeviceGetCount")?) };
        // SAFETY: plain calls into the driver with a valid out pointer.
        let rc = unsafe { init(0) };
        if rc != 0 {
            return Err(format!(
                "the NVIDIA driver did not start (cuInit error {rc}; 100 means no GPU is \
                 visible, 35 a driver older than the runtime)"
            ));
        }
        let mut n = 0i32;
        let rc = unsafe { count(&mut n) };
        if rc != 0 {
            return Err(format!("cuDeviceGetCount error {rc}"));
        }
        Ok(n.max(0) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "CUDA".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let err = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(err.contains("expected cpu, cuda or cuda:N"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_cuda_device_is_named_by_its_index() {
        // The Debug form burn 0.22.1 printed on an H200 (session 17).
        let seen = "Device<Autodiff { device: Cube(Cuda(Cuda(0))), checkpointing: Disabled }>";
        // The precision part is this build's and this process's (pinned case by case below).
        let precision = matmul_precision(
            option_env!("CEPA_CUDA_TF32_SWITCH").is_some(),
            std::env::var_os("CEPA_CUDA_TF32").as_deref(),
        );
        assert_eq!(
            cuda_label(seen),
            Some(format!("cuda:0 (CubeCL, {precision})"))
        );
        assert_eq!(
            cuda_label("Device<Cube(Cuda(Cuda(12)))>"),
            Some(format!("cuda:12 (CubeCL, {precision})"))
        );
        assert_eq!(cuda_label("Device<Flex>"), None);
        assert!(!is_accelerator(&Device::flex()));
        assert!(!is_accelerator(&Device::flex().autodiff()));
    }

    #[test]
    fn the_label_says_whether_cuda_multiplies_in_tf32() {
        use std::ffi::OsStr;
        // Without build_cuda.sh's switch CubeCL always may use TF32; with it, only on request.
        for env in [None, Some(OsStr::new("1")), Some(OsStr::new("0"))] {
            assert!(matmul_precision(false, env).starts_with("TF32"));
        }
        assert_eq!(matmul_precision(true, None), "float32 matrix products");
        assert_eq!(
            matmul_precision(true, Some(OsStr::new("0"))),
            "float32 matrix products"
        );
        assert!(matmul_precision(true, Some(OsStr::new("1"))).starts_with("TF32"));
    }

    #[test]
    fn the_cpu_computes_and_cuda_says_what_is_missing() {
        let d = DeviceChoice::Cpu.device(true).unwrap();
        let t = burn::prelude::Tensor::<1>::from_data(
            burn::tensor::TensorData::new(vec![1.0f32, 2.0], [2]),
            &d,
        );
        assert_eq!(t.sum().into_scalar::<f32>(), 3.0);
        assert!(
            device_label(&d).starts_with("cpu (flex, "),
            "{}",
            device_label(&d)
        );
        if !cuda_built() {
            let err = DeviceChoice::Cuda(0).device(true).unwrap_err().to_string();
            assert!(
                err.starts_with("device cuda:0: this build has no CUDA backend"),
                "{err}"
            );
            assert!(err.contains("--features cuda"), "{err}");
            assert!(err.contains("scripts/device/build_cuda.sh"), "{err}");
        }
    }
}
