//! The fuzzer's corpus as regression tests: every committed seed and every input that once
//! crashed a fuzz target (`fuzz/regressions/<target>/`) runs through the same entry points
//! (`metasrv::inputs`) on every `cargo test`, so a fixed bug stays fixed without cargo-fuzz.

use std::path::{Path, PathBuf};

use metasrv::catalog::manager::CreateTable;
use metasrv::catalog::partition::validate_table;
use metasrv::inputs::{self, seed_corpus, TARGETS};
use metasrv::proto::v1 as pb;
use prost::Message;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The seeds in code and the committed corpus agree (set METASRV_WRITE_FUZZ_SEEDS=1 to write
/// them after changing `inputs::seed_corpus`).
#[test]
fn the_committed_seed_corpus_is_current() {
    let write = std::env::var_os("METASRV_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in seed_corpus() {
        let path = fuzz_dir().join("corpus").join(target).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().expect("a corpus file has a directory"))
                .expect("create the corpus directory");
            std::fs::write(&path, &bytes).expect("write a seed");
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "{} differs from inputs::seed_corpus(); rerun with METASRV_WRITE_FUZZ_SEEDS=1",
            path.display()
        );
    }
}

/// Seeds are inputs metasrv accepts, so the fuzzer starts from the deep end of each parser.
#[test]
fn seeds_are_accepted_inputs() {
    let seeds = seed_corpus();
    for target in TARGETS {
        assert!(
            seeds.iter().any(|(t, _, _)| *t == target),
            "target {target} has no seed"
        );
    }
    for (target, name, bytes) in &seeds {
        match *target {
            "heartbeat" => {
                let request = pb::HeartbeatRequest::decode(bytes.as_slice()).expect("decodes");
                metasrv::stats::validate(request, inputs::CLUSTER_ID)
                    .unwrap_or_else(|e| panic!("heartbeat seed {name} refused: {e}"));
            }
            "create_table" => {
                let request = pb::CreateTableRequest::decode(bytes.as_slice()).expect("decodes");
                let table = CreateTable::from_pb(request).expect("converts");
                validate_table(&table.name, &table.schema, &table.partition, 1024)
                    .unwrap_or_else(|e| panic!("table seed {name} refused: {e}"));
            }
            _ => {}
        }
    }
}

/// Every corpus file and every past crash replays cleanly through its target.
#[test]
fn corpus_and_past_crashes_replay_cleanly() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for target in TARGETS {
        for kind in ["corpus", "regressions"] {
            for path in files_in(&fuzz_dir().join(kind).join(target)) {
                let data = std::fs::read(&path).expect("read a corpus file");
                replayed += 1;
                if std::panic::catch_unwind(|| inputs::run(target, &data)).is_err() {
                    failures.push(path.display().to_string());
                }
            }
        }
    }
    assert!(replayed >= seed_corpus().len(), "the corpus is missing");
    assert!(
        failures.is_empty(),
        "inputs that fail their target: {failures:?}"
    );
}
