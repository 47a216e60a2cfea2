//! `vssl` (a CPU build) launching a CUDA build installed beside it as `vssl-cuda`:
//! only when the driver reports a GPU and the command does not ask for the CPU;
//! otherwise it runs itself and says why no GPU is used. The driver is a stand-in
//! compiled here (`VSSL_CUDA_DRIVER`), `vssl-cuda` a script that echoes its
//! arguments.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::common::{stderr, stdout, tiny_recipe};

/// A stand-in driver library whose `cuInit` returns `init_rc` and which reports
/// `gpus` devices.
fn fake_driver(dir: &Path, name: &str, init_rc: i32, gpus: i32) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(
        &src,
        format!(
            "int cuInit(unsigned f) {{ (void)f; return {init_rc}; }}\n\
             int cuDeviceGetCount(int *n) {{ *n = {gpus}; return 0; }}\n"
        ),
    )
    .unwrap();
    let lib = dir.join(format!("lib{name}.so"));
    let o = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .expect("cc (the C compiler cargo links with) must be installed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    lib
}

/// This build's binary copied to `dir/vssl`, with a `vssl-cuda` beside it when `cuda`.
fn install(dir: &Path, cuda: bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let bin = dir.join("vssl");
    std::fs::copy(env!("CARGO_BIN_EXE_vssl"), &bin).unwrap();
    if cuda {
        let script = dir.join("vssl-cuda");
        std::fs::write(&script, "#!/bin/sh\necho \"vssl-cuda $*\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

fn vssl_at(bin: &Path, driver: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .args(args)
        .env("VSSL_CUDA_DRIVER", driver)
        .env("VSSL_LOG", "info")
        .output()
        .unwrap()
}

#[test]
fn the_cpu_binary_hands_over_to_vssl_cuda_only_when_a_gpu_answers() {
    let d = tempfile::tempdir().unwrap();
    let bin = install(&d.path().join("bin"), true);
    let one = fake_driver(d.path(), "onegpu", 0, 1);
    let none = fake_driver(d.path(), "nogpu", 0, 0);
    let broken = fake_driver(d.path(), "broken", 100, 0);
    let recipe = tiny_recipe(d.path(), "");
    let recipe = recipe.to_str().unwrap();

    // A GPU answers: the whole command line goes to vssl-cuda.
    let o = vssl_at(&bin, &one, &["--device", "auto", "recipe", recipe]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        format!("vssl-cuda --device auto recipe {recipe}")
    );
    // ... unless the command asks for the CPU.
    let o = vssl_at(&bin, &one, &["--device", "cpu", "recipe", recipe]);
    assert!(
        o.status.success() && stdout(&o).contains("[train]"),
        "{}",
        stdout(&o)
    );

    // No GPU, no driver, a failing driver: this binary runs, `auto` says why it falls
    // back, `cuda:0` is refused naming the reason.
    let missing = d.path().join("libcuda-missing.so");
    for (driver, why) in [
        (&none, "the NVIDIA driver reports no GPU"),
        (&missing, "no NVIDIA driver answered"),
        (&broken, "cuInit failed with CUDA error 100"),
    ] {
        let out = d.path().join(format!(
            "run-{}",
            driver.file_stem().unwrap().to_string_lossy()
        ));
        let o = vssl_at(
            &bin,
            driver,
            &[
                "--device",
                "cuda:0",
                "train",
                recipe,
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(why) && stderr(&o).contains("vssl-cuda"),
            "{why}: {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        let o = vssl_at(
            &bin,
            driver,
            &[
                "train",
                recipe,
                "--out",
                out.to_str().unwrap(),
                "--set",
                "train.steps=1",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("--device auto: ") && e.contains(why), "{e}");
    }

    // Without vssl-cuda beside it, a CPU build says it has no CUDA support.
    let plain = install(&d.path().join("plain"), false);
    let o = vssl_at(
        &plain,
        &one,
        &[
            "--device",
            "cuda:0",
            "train",
            recipe,
            "--out",
            "/nonexistent/x",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("has not been built with cuda support")
            && !stdout(&o).contains("vssl-cuda"),
        "{}",
        stderr(&o)
    );
}
