//! Training throughput, in images per second, of the project's networks on a slice of the
//! CIFAR-10 training split: one pass of Adam (batch 64 unless given, no augmentation) over the first N images
//! on the CPU, after one warm-up batch. The PreAct-ResNet-18 (width 16, BatchNorm) is the CPU
//! victim of `zoo/realistic.toml`.
//!
//! `cargo run -p cepa --example train_throughput [-- CIFAR_DIR [N [NAME [BATCH]]]]` (defaults
//! `../shared/data/cifar10`, 2000, every network, 64; NAME keeps the networks whose name
//! contains it, e.g. `preact`).

use std::error::Error;
use std::path::PathBuf;

use cepa::data::{Split, load};
use cepa::model::cpu_device;
use cepa::train::{
    AllConvArch, Architecture, CnnArch, NetArch, PreActArch, ResNetArch, TrainConfig, Trainer,
    VggArch,
};

fn main() -> Result<(), Box<dyn Error>> {
    // As `cepa` itself does: freed tensor buffers stay in the process (runtime.rs).
    cepa::runtime::tune_allocator();
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "../shared/data/cifar10".into()),
    );
    let n: usize = args.next().map_or(Ok(2000), |s| s.parse())?;
    let only = args.next().unwrap_or_default();
    let batch_size: usize = args.next().map_or(Ok(64), |s| s.parse())?;
    let full = load(&dir, Split::Train)?;
    let set = full.subset(&(0..n.min(full.len())).collect::<Vec<_>>());
    let warm = full.subset(&(0..batch_size).collect::<Vec<_>>());
    let (c, h, w, k) = (set.channels, set.height, set.width, set.num_classes);
    let device = cpu_device(true);
    let cfg = TrainConfig {
        epochs: 1,
        batch_size,
        ..TrainConfig::default()
    };
    let cnn = CnnArch {
        kernel: 5,
        conv1: 16,
        conv2: 32,
        hidden: 64,
        ..CnnArch::default()
    };
    let nets = [
        ("cnn 5x5 16-32, hidden 64", NetArch::Cnn(cnn)),
        ("resnet-8 16-32-64", NetArch::ResNet(ResNetArch::default())),
        (
            "vgg 32,32,p,64,64,p,128,p, hidden 128",
            NetArch::Vgg(VggArch::default()),
        ),
        (
            "allconv 32,32,d,64,64,d,64, 1x1 head",
            NetArch::AllConv(AllConvArch::default()),
        ),
        (
            "preact-resnet-18 16-32-64-128, batchnorm",
            NetArch::PreAct(PreActArch {
                widths: vec![16, 32, 64, 128],
                ..PreActArch::default()
            }),
        ),
    ];
    println!("{} images {c}x{h}x{w}, batch {}", set.len(), cfg.batch_size);
    for (name, arch) in nets.into_iter().filter(|(name, _)| name.contains(&only)) {
        let arch = arch.with_io(c, h, w, k);
        let mut trainer = Trainer::new(&arch.init(0)?, &cfg, &device)?;
        trainer.epoch(&warm)?;
        let s = trainer.epoch(&set)?;
        println!(
            "{name:<40} {:>8} params {:>7.1} s {:>8.1} images/s (loss {:.3})",
            arch.num_params(),
            s.seconds,
            set.len() as f64 / s.seconds,
            s.loss
        );
    }
    Ok(())
}
