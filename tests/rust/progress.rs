//! Progress from the core: a long call counts its batches through the token's `Progress`,
//! monotone up to the total, and a sink that fires the token stops the call.

use std::sync::{Arc, Mutex};

use mindscope::hooks::{CaptureSpec, LogitsMode, Positions};
use mindscope::interrupt::Cancel;
use mindscope::model::{Ablation, AblationJob, LanguageModel, PackLimits};
use mindscope::progress::Progress;
use mindscope::MsError;

mod common;

fn tiny_llama() -> LanguageModel {
    LanguageModel::load(&common::shared_dir().join("models/tiny/llama3")).unwrap()
}

type Seen = Arc<Mutex<Vec<(u64, u64)>>>;

fn recording_token() -> (Cancel, Seen) {
    let seen: Seen = Arc::default();
    let sink = {
        let seen = seen.clone();
        move |d, t| seen.lock().unwrap().push((d, t))
    };
    (Cancel::new().with_progress(Progress::new(sink)), seen)
}

fn assert_monotone_to(seen: &[(u64, u64)], total: u64) {
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|&(_, t)| t == total), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
    assert_eq!(seen.last().unwrap().0, total, "{seen:?}");
}

fn prompts(model: &LanguageModel, n: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| {
            let text = format!("Prompt number {i} is about {}", "words ".repeat(i % 5));
            model.tokenizer.encode(&text).unwrap().ids
        })
        .collect()
}

fn last_resid_spec(model: &LanguageModel) -> CaptureSpec {
    let names = ["blocks.1.hook_resid_post".to_string()];
    CaptureSpec::new(
        model.hooks(),
        &names,
        Positions::Last,
        None,
        LogitsMode::Last,
    )
    .unwrap()
}

#[test]
fn a_run_counts_every_prompt_in_batches() {
    let model = tiny_llama();
    let (token, seen) = recording_token();
    let spec = last_resid_spec(&model);
    let out = model
        .run_ids(prompts(&model, 23), &spec, &[], 4, &token)
        .unwrap();
    assert_eq!(out.tokens.len(), 23);
    let seen = seen.lock().unwrap();
    assert_monotone_to(&seen, 23);
    // One report to start and at least one per batch of 4 (smaller chunks with more cores).
    assert!(seen.len() > 23 / 4, "{seen:?}");
}

#[test]
fn an_attribution_counts_the_clean_sequence_and_every_variant() {
    let model = tiny_llama();
    let prompt = model
        .tokenizer
        .encode(&"one two three four ".repeat(6))
        .unwrap()
        .ids;
    let target = model.tokenizer.encode(" five").unwrap().ids;
    let spans: Vec<(usize, usize)> = (0..prompt.len()).map(|i| (i, i + 1)).collect();
    let job = AblationJob {
        prompt: &prompt,
        target: &target,
        spans: &spans,
        ablation: Ablation::Delete,
    };
    let limits = PackLimits {
        variants: 3,
        rows: 1 << 20,
    };
    let total = spans.len() as u64 + 1;
    let (token, seen) = recording_token();
    let fast = model.ablation_scores(&job, limits, &token).unwrap();
    assert_monotone_to(&seen.lock().unwrap(), total);
    let (token, seen) = recording_token();
    let naive = model.ablation_scores_naive(&job, &token).unwrap();
    let seen = seen.lock().unwrap();
    assert_monotone_to(&seen, total);
    assert_eq!(seen.len() as u64, total + 1, "one report per sequence");
    // Counting does not change the numbers.
    assert!((fast.clean - naive.clean).abs() < 1e-3);
}

#[test]
fn a_sink_that_fires_the_token_stops_the_run_and_the_model_still_works() {
    let model = tiny_llama();
    let cancel = Cancel::new();
    let calls = Arc::new(Mutex::new(0u64));
    let sink = {
        let (cancel, calls) = (cancel.clone(), calls.clone());
        move |done: u64, _| {
            *calls.lock().unwrap() += 1;
            if done > 0 {
                cancel.fire();
            }
        }
    };
    let token = cancel.clone().with_progress(Progress::new(sink));
    let spec = last_resid_spec(&model);
    let err = model
        .run_ids(prompts(&model, 200), &spec, &[], 2, &token)
        .err()
        .expect("the run should stop");
    assert!(matches!(err, MsError::Interrupted), "{err}");
    // Stopped after a few batches (at most one in flight per core), not after all 100.
    assert!(*calls.lock().unwrap() < 20, "{}", calls.lock().unwrap());
    let out = model
        .run_ids(prompts(&model, 3), &spec, &[], 2, &Cancel::new())
        .unwrap();
    assert_eq!(out.tokens.len(), 3);
}

#[test]
fn a_load_counts_tensors_and_a_fired_token_stops_it() {
    let folder = common::shared_dir().join("models/tiny/llama3");
    let (token, seen) = recording_token();
    let model = LanguageModel::load_with(&folder, None, &token).unwrap();
    let seen = seen.lock().unwrap();
    let total = seen[0].1;
    assert!(total > 5, "{seen:?}");
    assert_monotone_to(&seen, total);
    assert_eq!(seen[0], (0, total));
    assert!(seen.len() > 5, "one report per tensor: {seen:?}");
    assert_eq!(model.config().n_layers, tiny_llama().config().n_layers);
    let fired = Cancel::new();
    fired.fire();
    let err = LanguageModel::load_with(&folder, None, &fired)
        .err()
        .expect("a fired token stops the load");
    assert!(matches!(err, MsError::Interrupted), "{err}");
}
