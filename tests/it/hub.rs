//! Sharing on the Hub: `vssl export` (torchvision-loadable weights, config, a model
//! card whose model-index is the run's results), `vssl push` against the loopback
//! Hub of `hub_server`, and loading by `hf://` id and registry name through the
//! standard cache, online and offline. The token must never appear in any output or
//! file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::common::{
    assert_bit_identical, repo, run, stderr, stdout, tensors, tiny_recipe, train, vssl,
};
use crate::hub_server::{sha256_hex, HubServer, Lie};

const TOKEN: &str = "hf_vsslTestTokenDoNotPrint0123456789";

/// `vssl` with a clean Hub environment: endpoint `url`, cache and home under `home`.
fn hub_cmd(args: &[&str], url: &str, home: &Path, token: Option<&str>) -> Command {
    let mut c = vssl(args);
    for k in [
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_TOKEN_PATH",
        "XDG_CACHE_HOME",
    ] {
        c.env_remove(k);
    }
    c.env("HF_ENDPOINT", url).env("HF_HOME", home);
    if let Some(t) = token {
        c.env("HF_TOKEN", t);
    }
    c
}

/// Every byte of every file under `dir`, by relative path (symlinks followed).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let b = std::fs::read(&p).unwrap_or_default();
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), b);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn assert_no_token(what: &str, o: &Output, dirs: &[&Path]) {
    let all = format!("{}{}", stdout(o), stderr(o));
    assert!(
        !all.contains(TOKEN),
        "{what}: the token was printed:\n{all}"
    );
    for d in dirs {
        for (p, b) in snapshot(d) {
            let text = String::from_utf8_lossy(&b);
            assert!(
                !text.contains(TOKEN),
                "{what}: the token is in {}",
                p.display()
            );
        }
    }
}

/// A tiny trained run with linear and knn results, its own and random-init ones.
fn trained_run(dir: &Path) -> PathBuf {
    let recipe = tiny_recipe(dir, "");
    let out = dir.join("run");
    let o = train(&recipe, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    for extra in [&[][..], &["--random-init"][..]] {
        let mut args = vec![
            "eval",
            out.to_str().unwrap(),
            "--protocol",
            "linear,knn",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let o = run(&mut vssl(&args));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    out
}

/// `vssl export RUN --out OUT EXTRA...`.
fn export(run_dir: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "export",
        run_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&mut vssl(&args))
}

fn numeric_leaves(v: &Value, prefix: &str, out: &mut BTreeMap<String, f64>) {
    match v {
        Value::Number(n) => {
            out.insert(prefix.to_string(), n.as_f64().unwrap());
        }
        Value::Object(m) => {
            for (k, v) in m {
                if k == "history" {
                    continue;
                }
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                numeric_leaves(v, &key, out);
            }
        }
        _ => {}
    }
}

#[test]
fn export_writes_weights_config_and_a_card_with_the_runs_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = trained_run(dir.path());
    let out = dir.path().join("export");
    let o = export(&run_dir, &out, &["--repo", "org/tiny"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Weights: exactly the backbone's tensors (no pretext heads), metadata intact.
    let model = tensors(&run_dir.join("model.safetensors"));
    let exported = tensors(&out.join("model.safetensors"));
    assert!(
        model.keys().any(|k| k.starts_with("pretext.")),
        "the run has heads"
    );
    let backbone: Vec<&String> = model
        .keys()
        .filter(|k| !k.starts_with("pretext."))
        .collect();
    assert_eq!(exported.keys().collect::<Vec<_>>(), backbone);
    let own: BTreeMap<String, Tensor> = model
        .iter()
        .filter(|(k, _)| !k.starts_with("pretext."))
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    assert_bit_identical(&exported, &own);
    let (_, meta) =
        vssl::io::read_safetensors(&out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(meta["format"], "pt");
    assert_eq!(
        meta["recipe"],
        std::fs::read_to_string(run_dir.join("recipe.resolved.toml")).unwrap()
    );
    assert_eq!(meta["vssl_version"], env!("CARGO_PKG_VERSION"));
    let input: Value = serde_json::from_str(&meta["input"]).unwrap();
    assert_eq!(input["channels"], "RGB");
    assert_eq!(input["frames"], 4);
    assert_eq!(input["size"], 16);
    assert_eq!(input["mean"].as_array().unwrap().len(), 3);

    // config.json rebuilds the model.
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["arch"], "r3d_small");
    assert_eq!(cfg["widths"], serde_json::json!([4, 8, 8, 8]));
    assert_eq!(cfg["norm"], "bn");
    assert_eq!(cfg["frames"], 4);
    assert_eq!(cfg["method"], "geometric");
    assert_eq!(cfg["pretraining_data"]["kind"], "synthetic");

    // The card's YAML parses and its model-index is exactly the run's own results.
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    let front = card
        .strip_prefix("---\n")
        .unwrap()
        .split("\n---\n")
        .next()
        .unwrap();
    let y: serde_yaml::Value = serde_yaml::from_str(front).expect("front matter is YAML");
    assert_eq!(y["library_name"], serde_yaml::Value::from("vssl"));
    assert_eq!(
        y["pipeline_tag"],
        serde_yaml::Value::from("feature-extraction")
    );
    let tags: Vec<&str> = y["tags"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for t in [
        "video",
        "self-supervised",
        "action-recognition",
        "geometric",
    ] {
        assert!(tags.contains(&t), "tag {t} missing: {tags:?}");
    }
    let mut from_card: BTreeMap<(String, String), f64> = BTreeMap::new();
    for result in y["model-index"][0]["results"].as_sequence().unwrap() {
        let task = result["task"]["name"].as_str().unwrap().to_string();
        for m in result["metrics"].as_sequence().unwrap() {
            let key = (task.clone(), m["type"].as_str().unwrap().to_string());
            assert!(from_card
                .insert(key, m["value"].as_f64().unwrap())
                .is_none());
        }
    }
    let mut from_run: BTreeMap<(String, String), f64> = BTreeMap::new();
    for stem in ["linear", "knn"] {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(run_dir.join(format!("eval/{stem}.json"))).unwrap(),
        )
        .unwrap();
        let task = if stem == "linear" {
            "Linear probe (frozen backbone)"
        } else {
            "Nearest-neighbour retrieval (frozen backbone)"
        };
        let mut leaves = BTreeMap::new();
        numeric_leaves(&v["metrics"], "", &mut leaves);
        for (k, x) in leaves {
            from_run.insert((task.to_string(), k), x);
        }
    }
    assert!(from_run.len() >= 6, "{from_run:?}");
    assert_eq!(
        from_card, from_run,
        "model-index must carry exactly the run's metrics"
    );
    assert!(card.contains("hf://org/tiny") && card.contains("@article{jing2018self"));
    assert!(
        card.contains("random init"),
        "the baseline is in the body table"
    );

    // --with-heads keeps them; a non-empty --out is refused without touching it.
    let heads = dir.path().join("heads");
    let o = run(&mut vssl(&[
        "export",
        run_dir.to_str().unwrap(),
        "--out",
        heads.to_str().unwrap(),
        "--with-heads",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(tensors(&heads.join("model.safetensors")).len(), model.len());
    let before = snapshot(&out);
    let o = export(&run_dir, &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not empty"));
    assert_eq!(snapshot(&out), before);
}

/// The closed-form weights and clip of tools/torchvision_features.py.
fn formula_run(dir: &Path) -> PathBuf {
    let run_dir = dir.join("r3d18");
    std::fs::create_dir_all(&run_dir).unwrap();
    let o = run(&mut vssl(&[
        "recipe",
        "experiments/quickstart.toml",
        "--set",
        "backbone.arch=\"r3d_18\"",
        "--set",
        "data.frames=8",
        "--set",
        "data.size=32",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(run_dir.join("recipe.resolved.toml"), stdout(&o)).unwrap();
    let vs = vssl::nn::VarStore::new(&Device::Cpu, 0);
    let cfg = vssl::recipe::BackboneConfig {
        arch: vssl::recipe::Arch::R3d18,
        ..Default::default()
    };
    let _net = vssl::backbone::build(&cfg, &vs, 8).unwrap();
    let mut ts: Vec<(String, Tensor)> = vs
        .all()
        .iter()
        .map(|(k, v)| (k.clone(), crate::torchvision::formula(k, v.dims())))
        .collect();
    ts.push((
        "pretext.head.weight".into(),
        Tensor::zeros((4, 512), candle_core::DType::F32, &Device::Cpu).unwrap(),
    ));
    vssl::io::write_safetensors_atomic(
        &run_dir.join("model.safetensors"),
        &ts,
        &Default::default(),
    )
    .unwrap();
    run_dir
}

#[test]
fn exported_r3d_18_gives_torchvisions_features() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = formula_run(dir.path());
    let out = dir.path().join("export");
    let o = export(&run_dir, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let exported = tensors(&out.join("model.safetensors"));
    assert!(!exported
        .keys()
        .any(|k| k.starts_with("pretext.") || k.starts_with("fc.")));
    assert!(exported.contains_key("layer4.1.conv2.1.num_batches_tracked"));
    // Features of the exported file through `vssl extract`, against torchvision's.
    let clips = dir.path().join("clips.safetensors");
    let clip = crate::torchvision::clip(&[1, 3, 8, 32, 32]);
    vssl::io::write_safetensors_atomic(&clips, &[("clips".into(), clip)], &Default::default())
        .unwrap();
    let feats = dir.path().join("f.safetensors");
    let o = run(&mut vssl(&[
        "extract",
        "--weights",
        out.join("model.safetensors").to_str().unwrap(),
        "--input",
        clips.to_str().unwrap(),
        "--output",
        feats.to_str().unwrap(),
        "--device",
        "cpu",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let got = &tensors(&feats)["features"];
    let want = &crate::torchvision::fixture()["r3d_18"];
    let diff = crate::torchvision::max_abs_diff(got, want);
    eprintln!("exported r3d_18 features vs torchvision: max abs diff {diff:.3e}");
    assert!(diff <= 1e-5, "max abs diff {diff}");
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("torchvision.models.video.r3d_18()") && card.contains("strict=True"));
}

// ---- push ----

fn export_dir(dir: &Path) -> PathBuf {
    let out = dir.join("folder");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("README.md"),
        "---\nlibrary_name: vssl\n---\n# card\n",
    )
    .unwrap();
    std::fs::write(out.join("config.json"), "{\"arch\": \"r3d_small\"}\n").unwrap();
    let big: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(out.join("model.safetensors"), big).unwrap();
    out
}

fn push(folder: &Path, url: &str, home: &Path, token: Option<&str>, extra: &[&str]) -> Output {
    let mut args = vec!["push", folder.to_str().unwrap(), "--repo", "org/model"];
    args.extend_from_slice(extra);
    let mut c = hub_cmd(&args, url, home, token);
    c.env("VSSL_LOG", "trace").env("RUST_LOG", "trace");
    run(&mut c)
}

#[test]
fn push_commits_small_files_inline_and_large_ones_through_lfs() {
    let dir = tempfile::tempdir().unwrap();
    let folder = export_dir(dir.path());
    let before = snapshot(&folder);
    let hub = HubServer::start(TOKEN);
    let home = dir.path().join("hf");
    let o = push(
        &folder,
        &hub.url,
        &home,
        Some(TOKEN),
        &["--message", "first weights"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_no_token("push", &o, &[dir.path()]);
    let repo = hub.repo("org/model").expect("repo created");
    assert_eq!(repo.commits.len(), 1);
    let (summary, lines) = &repo.commits[0];
    assert_eq!(summary, "first weights");
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    for l in &lines[1..] {
        kinds.insert(
            l["value"]["path"].as_str().unwrap().into(),
            l["key"].as_str().unwrap().into(),
        );
    }
    assert_eq!(kinds["model.safetensors"], "lfsFile");
    assert_eq!(kinds["config.json"], "file");
    assert_eq!(kinds["README.md"], "file");
    assert_eq!(kinds.len(), 3, "every file is in the commit");
    for (p, b) in &before {
        let (got, lfs) = &repo.files[p.to_str().unwrap()];
        assert_eq!(got, b, "{} arrived changed", p.display());
        assert_eq!(*lfs, p.to_str() == Some("model.safetensors"));
    }
    let lfs_line = lines.iter().find(|l| l["key"] == "lfsFile").unwrap();
    assert_eq!(
        lfs_line["value"]["oid"],
        sha256_hex(&before[Path::new("model.safetensors")])
    );
    assert_eq!(lfs_line["value"]["size"], 20_000);
    let seen = hub.seen();
    let put = seen
        .iter()
        .find(|s| s.method == "PUT")
        .expect("an LFS upload");
    assert!(
        put.header("authorization").is_none(),
        "no token to storage URLs"
    );
    assert!(seen
        .iter()
        .any(|s| s.path.ends_with("/info/lfs/objects/batch")));
    assert!(seen.iter().any(|s| s.path.contains("/preupload/")));
    assert!(stdout(&o).contains("/org/model/commit/"));

    // Pushing again uploads nothing new through LFS (the server has the object).
    let o = push(
        &folder,
        &hub.url,
        &home,
        Some(TOKEN),
        &["--revision", "dev"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(hub.seen().iter().filter(|s| s.method == "PUT").count(), 1);
    assert!(hub.repo("org/model").unwrap().branches.contains_key("dev"));

    // The token file under HF_HOME serves when HF_TOKEN is unset; --create-pr leaves
    // the branch where it was and prints the pull request.
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("token"), format!("{TOKEN}\n")).unwrap();
    let head = hub.repo("org/model").unwrap().branches["main"].clone();
    let o = push(&folder, &hub.url, &home, None, &["--create-pr"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("/discussions/"), "{}", stdout(&o));
    assert_eq!(hub.repo("org/model").unwrap().branches["main"], head);
    assert_no_token("token file", &o, &[&folder]);
    std::fs::remove_file(home.join("token")).unwrap();

    // Multipart LFS uploads, when the server asks for them (3 parts of 8000 bytes).
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let big: Vec<u8> = (0..20_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(other.join("model.safetensors"), &big).unwrap();
    hub.state.lock().unwrap().multipart_chunk = Some(8000);
    let o = push(&other, &hub.url, &home, Some(TOKEN), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        hub.repo("org/model").unwrap().files["model.safetensors"].0,
        big
    );
    let parts = hub
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/lfs-part/"))
        .count();
    assert_eq!(parts, 3);
    hub.state.lock().unwrap().multipart_chunk = None;

    // --private reaches the repo creation.
    let mut c = hub_cmd(
        &[
            "push",
            folder.to_str().unwrap(),
            "--repo",
            "org/private",
            "--private",
        ],
        &hub.url,
        &home,
        Some(TOKEN),
    );
    assert!(run(&mut c).status.success());
    assert!(hub.repo("org/private").unwrap().private);
    assert_eq!(snapshot(&folder), before, "push never changes the folder");
}

#[test]
fn push_errors_are_clear_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let folder = export_dir(dir.path());
    let before = snapshot(&folder);
    let home = dir.path().join("hf");

    // 401: a wrong token.
    let hub = HubServer::start(TOKEN);
    let wrong = "hf_wrongTokenAlsoSecret987654321";
    let o = push(&folder, &hub.url, &home, Some(wrong), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("401") && stderr(&o).contains("HF_TOKEN"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains(wrong) && !stdout(&o).contains(wrong));
    // No token at all.
    let o = push(&folder, &hub.url, &home, None, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no Hub token"), "{}", stderr(&o));

    // 403: no write access.
    hub.state.lock().unwrap().read_only.push("org/model".into());
    let o = push(&folder, &hub.url, &home, Some(TOKEN), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("403"), "{}", stderr(&o));
    assert_no_token("403", &o, &[dir.path()]);
    hub.state.lock().unwrap().read_only.clear();

    // 500 then 200: retried, then committed.
    hub.state
        .lock()
        .unwrap()
        .fail
        .push(("/api/models/org/model/commit/".into(), 500, 1));
    let o = push(&folder, &hub.url, &home, Some(TOKEN), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("retrying"), "{}", stderr(&o));
    let commits = hub
        .seen()
        .iter()
        .filter(|s| s.path.contains("/commit/"))
        .count();
    assert_eq!(commits, 2, "one failed and one retried commit request");
    assert_eq!(hub.repo("org/model").unwrap().commits.len(), 1);

    // 500 always: a clear error after the retries, no commit.
    hub.state.lock().unwrap().fail.push((
        "/api/models/org/model/preupload/".into(),
        500,
        usize::MAX,
    ));
    let o = push(&folder, &hub.url, &home, Some(TOKEN), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("HTTP 500") && stderr(&o).contains("after 4 attempts"),
        "{}",
        stderr(&o)
    );
    assert_eq!(hub.repo("org/model").unwrap().commits.len(), 1);
    assert_no_token("500", &o, &[dir.path()]);
    hub.state.lock().unwrap().fail.clear();

    // 412: the branch moved during the push.
    hub.state.lock().unwrap().move_head_before_commit = true;
    let o = push(&folder, &hub.url, &home, Some(TOKEN), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("revision moved"), "{}", stderr(&o));

    // A network failure (nothing listening).
    let o = push(&folder, "http://127.0.0.1:9", &home, Some(TOKEN), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("network failure"), "{}", stderr(&o));
    assert_eq!(
        snapshot(&folder),
        before,
        "a failed push changes nothing local"
    );
}

// ---- loading by id ----

/// Writes a file into a cache in the standard layout, as huggingface_hub would.
fn populate_cache(cache: &Path, repo: &str, commit: &str, file: &str, bytes: &[u8]) {
    let dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let etag = sha256_hex(bytes);
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    std::fs::write(dir.join("blobs").join(&etag), bytes).unwrap();
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::write(dir.join("refs/main"), commit).unwrap();
    let snap = dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::os::unix::fs::symlink(format!("../../blobs/{etag}"), snap.join(file)).unwrap();
}

#[test]
fn weights_load_by_hf_id_and_registry_name_from_the_cache_offline() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = trained_run(dir.path());
    let out = dir.path().join("export");
    assert!(run(&mut vssl(&[
        "export",
        run_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap()
    ]))
    .status
    .success());
    let weights = std::fs::read(out.join("model.safetensors")).unwrap();
    let home = dir.path().join("hf");
    let cache = home.join("hub");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    populate_cache(&cache, "org/tiny", commit, "model.safetensors", &weights);
    let index = dir.path().join("index.toml");
    std::fs::write(&index, format!(
        "[[weights]]\nname = \"tiny-rot\"\nrecipe = \"experiments/quickstart.toml\"\nrepo = \"org/tiny\"\nfile = \"model.safetensors\"\nsha256 = \"{}\"\n",
        sha256_hex(&weights)
    )).unwrap();
    let clips = dir.path().join("clips.safetensors");
    let clip = Tensor::zeros((2, 3, 4, 16, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
    vssl::io::write_safetensors_atomic(&clips, &[("clips".into(), clip)], &Default::default())
        .unwrap();
    let mut feats = Vec::new();
    for (i, w) in [
        "hf://org/tiny",
        "tiny-rot",
        out.join("model.safetensors").to_str().unwrap(),
    ]
    .iter()
    .enumerate()
    {
        let f = dir.path().join(format!("f{i}.safetensors"));
        let mut c = hub_cmd(
            &[
                "extract",
                "--weights",
                w,
                "--input",
                clips.to_str().unwrap(),
                "--output",
                f.to_str().unwrap(),
                "--device",
                "cpu",
            ],
            "http://127.0.0.1:9",
            &home,
            None,
        );
        c.env("HF_HUB_OFFLINE", "1").env("VSSL_INDEX", &index);
        let o = run(&mut c);
        assert!(o.status.success(), "{w}: {}", stderr(&o));
        feats.push(
            tensors(&f)["features"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    assert_eq!(feats[0], feats[2]);
    assert_eq!(feats[1], feats[2]);

    // Eval by id: a run directory materialised from the weights' recipe metadata.
    let ev = dir.path().join("ev");
    let mut c = hub_cmd(
        &[
            "eval",
            "hf://org/tiny",
            "--out",
            ev.to_str().unwrap(),
            "--protocol",
            "knn",
            "--device",
            "cpu",
        ],
        "http://127.0.0.1:9",
        &home,
        None,
    );
    c.env("HF_HUB_OFFLINE", "1");
    let o = run(&mut c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(ev.join("eval/knn.json").is_file());

    // Missing file, offline: exit 2 naming the repo and the file.
    let mut c = hub_cmd(
        &["pull", "hf://org/tiny/missing.safetensors"],
        "http://127.0.0.1:9",
        &home,
        None,
    );
    c.env("HF_HUB_OFFLINE", "1");
    let o = run(&mut c);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("org/tiny")
            && stderr(&o).contains("missing.safetensors")
            && stderr(&o).contains("HF_HUB_OFFLINE"),
        "{}",
        stderr(&o)
    );

    // A registry entry whose sha256 does not match the cached file is refused.
    std::fs::write(
        &index,
        format!(
            "[[weights]]\nname = \"tiny-rot\"\nrepo = \"org/tiny\"\nsha256 = \"{}\"\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let mut c = hub_cmd(&["pull", "tiny-rot"], "http://127.0.0.1:9", &home, None);
    c.env("HF_HUB_OFFLINE", "1").env("VSSL_INDEX", &index);
    let o = run(&mut c);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("sha256"), "{}", stderr(&o));
}

#[test]
fn downloads_are_verified_and_land_in_the_standard_cache() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubServer::start(TOKEN);
    let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let small = b"{\"arch\": \"r3d_small\"}\n".to_vec();
    let other: Vec<u8> = big.iter().rev().copied().collect();
    let commit = hub.add_repo(
        "org/m",
        &[
            ("model.safetensors", &big),
            ("config.json", &small),
            ("w.pth", &other),
        ],
    );
    let home = dir.path().join("hf");
    let cache = home.join("hub");
    let pull = |what: &str| {
        let mut c = hub_cmd(&["pull", what], &hub.url, &home, Some(TOKEN));
        c.env("VSSL_LOG", "trace");
        run(&mut c)
    };
    let o = pull("hf://org/m");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_no_token("pull", &o, &[dir.path()]);
    let repo_dir = cache.join("models--org--m");
    let snap = repo_dir
        .join("snapshots")
        .join(&commit)
        .join("model.safetensors");
    assert_eq!(stdout(&o).trim(), snap.to_str().unwrap());
    assert_eq!(std::fs::read(&snap).unwrap(), big);
    assert!(std::fs::symlink_metadata(&snap)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        commit
    );
    assert!(repo_dir.join("blobs").join(sha256_hex(&big)).is_file());
    // A regular (non-LFS) file is checked against its git blob sha1.
    let o = pull("hf://org/m/config.json");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(stdout(&o).trim()).unwrap(), small);
    // Offline, the cache serves the same file.
    let mut c = hub_cmd(&["pull", "hf://org/m"], "http://127.0.0.1:9", &home, None);
    c.env("HF_HUB_OFFLINE", "1");
    let o = run(&mut c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), snap.to_str().unwrap());

    // Lies are discarded, never left in the cache.
    let blobs_before = snapshot(&repo_dir.join("blobs")).len();
    for (lie, expect) in [
        (
            Lie {
                size: Some(4000),
                ..Default::default()
            },
            "bytes",
        ),
        (
            Lie {
                etag: Some("a".repeat(64)),
                ..Default::default()
            },
            "hash",
        ),
        (
            Lie {
                etag: Some("../../../evil".into()),
                ..Default::default()
            },
            "ETag",
        ),
        (
            Lie {
                commit: Some("../../x".into()),
                ..Default::default()
            },
            "commit",
        ),
    ] {
        hub.state
            .lock()
            .unwrap()
            .lies
            .insert(("org/m".into(), "w.pth".into()), lie);
        let o = pull("hf://org/m/w.pth");
        assert_eq!(o.status.code(), Some(1), "{expect}: {}", stderr(&o));
        assert!(stderr(&o).contains(expect), "{expect}: {}", stderr(&o));
        assert_eq!(
            snapshot(&repo_dir.join("blobs")).len(),
            blobs_before,
            "{expect}: nothing new in blobs/"
        );
        assert!(!repo_dir
            .join("snapshots")
            .join(&commit)
            .join("w.pth")
            .exists());
        assert!(!dir.path().join("evil").exists() && !cache.join("evil").exists());
    }
    // Missing things online: exit 2 naming them.
    hub.state.lock().unwrap().lies.clear();
    let o = pull("hf://org/m/nope.bin");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("nope.bin") && stderr(&o).contains("org/m"),
        "{}",
        stderr(&o)
    );
    let o = pull("hf://org/absent");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("repo org/absent"), "{}", stderr(&o));
    // Names that would escape the cache are refused before any request.
    let n = hub.seen().len();
    for bad in [
        "hf://org/m/../../etc/passwd",
        "hf://../m",
        "hf://org/m@..%2F..%2Fx",
    ] {
        let o = pull(bad);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
    }
    assert_eq!(hub.seen().len(), n);
}

#[test]
fn import_reads_tclrs_sequential_layout_through_the_resolver() {
    let dir = tempfile::tempdir().unwrap();
    let pth = repo().join("tests/fixtures/tiny_state_tclr.pth");
    let bytes = std::fs::read(&pth).unwrap();
    let hub = HubServer::start(TOKEN);
    hub.add_repo("org/tclr", &[("r3d_tclr.pth", &bytes)]);
    let home = dir.path().join("hf");
    let out = dir.path().join("w.safetensors");
    let mut c = hub_cmd(
        &[
            "import",
            "hf://org/tclr/r3d_tclr.pth",
            "--arch",
            "r3d_small",
            "--set",
            "backbone.widths=[2,2,2,2]",
            "--out",
            out.to_str().unwrap(),
        ],
        &hub.url,
        &home,
        None,
    );
    let o = run(&mut c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("unused: 1.bias, 1.weight"),
        "{}",
        stderr(&o)
    );
    // Same tensors as importing the plain state dict.
    let plain = dir.path().join("plain.safetensors");
    let o = run(&mut vssl(&[
        "import",
        repo()
            .join("tests/fixtures/tiny_state.pth")
            .to_str()
            .unwrap(),
        "--arch",
        "r3d_small",
        "--set",
        "backbone.widths=[2,2,2,2]",
        "--out",
        plain.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_bit_identical(&tensors(&out), &tensors(&plain));
}

#[test]
fn backbone_init_starts_training_from_published_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = trained_run(dir.path());
    let out = dir.path().join("export");
    assert!(export(&run_dir, &out, &[]).status.success());
    let weights = std::fs::read(out.join("model.safetensors")).unwrap();
    let home = dir.path().join("hf");
    populate_cache(
        &home.join("hub"),
        "org/tiny",
        &"ab".repeat(20),
        "model.safetensors",
        &weights,
    );
    let recipe = tiny_recipe(dir.path(), "");
    let exported = tensors(&out.join("model.safetensors"));
    let key = "stem.0.weight";
    // With lr 1e-30 (no change in f32) the convolution weights stay where they started.
    for (init, name) in [(Some("hf://org/tiny"), "from-hub"), (None, "scratch")] {
        let target = dir.path().join(name);
        let mut args = vec![
            "train",
            recipe.to_str().unwrap(),
            "--out",
            target.to_str().unwrap(),
            "--device",
            "cpu",
            "--set",
            "train.lr=1e-30",
            "--set",
            "train.steps=1",
        ];
        let set = init.map(|i| format!("backbone.init=\"{i}\""));
        if let Some(s) = &set {
            args.extend_from_slice(&["--set", s]);
        }
        let mut c = hub_cmd(&args, "http://127.0.0.1:9", &home, None);
        c.env("HF_HUB_OFFLINE", "1");
        let o = run(&mut c);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let got = &tensors(&target.join("model.safetensors"))[key];
        let same = crate::torchvision::max_abs_diff(got, &exported[key]) == 0.0;
        assert_eq!(
            same,
            init.is_some(),
            "{name}: started from the init weights = {same}"
        );
    }
    // A bad init is an error naming it.
    let o = run(&mut vssl(&[
        "train",
        recipe.to_str().unwrap(),
        "--out",
        dir.path().join("bad").to_str().unwrap(),
        "--device",
        "cpu",
        "--set",
        "backbone.init=\"no/such/file.safetensors\"",
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no/such/file.safetensors"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn export_of_a_fine_tuned_model_keeps_its_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = trained_run(dir.path());
    let o = run(&mut vssl(&[
        "eval",
        run_dir.to_str().unwrap(),
        "--protocol",
        "finetune",
        "--device",
        "cpu",
        "--set",
        "eval.finetune_epochs=1",
        "--set",
        "eval.test_every=1",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = dir.path().join("tuned");
    let o = export(
        &run_dir,
        &out,
        &["--finetune", "finetune", "--base-model", "org/tiny"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let t = tensors(&out.join("model.safetensors"));
    let classes = t["fc.weight"].dims()[0];
    assert_eq!(classes, 8, "the synthetic set's 8 classes");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_classes"], 8);
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    let front = card
        .strip_prefix("---\n")
        .unwrap()
        .split("\n---\n")
        .next()
        .unwrap();
    let y: serde_yaml::Value = serde_yaml::from_str(front).unwrap();
    assert_eq!(
        y["pipeline_tag"],
        serde_yaml::Value::from("video-classification")
    );
    assert_eq!(y["base_model"], serde_yaml::Value::from("org/tiny"));
    let best = tensors(&run_dir.join("eval/finetune/best.safetensors"));
    assert_bit_identical(&t, &best);
    // A stem that is not a name is refused.
    let o = export(
        &run_dir,
        &dir.path().join("x"),
        &["--finetune", "../finetune"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
