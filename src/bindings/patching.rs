//! The request of `Model.activation_patching`, serde-typed: the Python layer resolves the
//! prompts and the metric (`mindscope.metrics.resolve_metric`) and passes one JSON object.

use serde::Deserialize;

use crate::error::{MsError, Result};
use crate::model::metric::Metric;
use crate::model::PatchSite;

/// `{"clean_ids": [...], "corrupt_ids": [...], "metric": {...}, "sites": [...], "naive": false,
/// "rows_per_batch": 4096}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchingRequest {
    pub clean_ids: Vec<u32>,
    pub corrupt_ids: Vec<u32>,
    pub metric: Metric,
    pub sites: Vec<String>,
    /// One full forward per patch with an intervention (the reference), instead of the
    /// shared-prefix packed path.
    #[serde(default)]
    pub naive: bool,
    /// About how many patched positions one packed run holds.
    #[serde(default = "default_pack_rows")]
    pub rows_per_batch: usize,
}

fn default_pack_rows() -> usize {
    4096
}

/// A parsed request: its sites resolved (duplicates dropped, order kept).
pub struct PatchingArgs {
    pub request: PatchingRequest,
    pub sites: Vec<PatchSite>,
}

pub fn patching_args(json: &str) -> Result<PatchingArgs> {
    let request: PatchingRequest = serde_json::from_str(json)
        .map_err(|e| MsError::invalid(format!("activation_patching: bad request: {e}")))?;
    if request.rows_per_batch == 0 {
        return Err(MsError::invalid(
            "activation_patching: rows_per_batch must be at least 1",
        ));
    }
    let mut sites = Vec::new();
    for name in &request.sites {
        let site = PatchSite::parse(name)?;
        if !sites.contains(&site) {
            sites.push(site);
        }
    }
    Ok(PatchingArgs { request, sites })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_parses_and_unknowns_are_refused() {
        let ok = r#"{"clean_ids": [1, 2], "corrupt_ids": [1, 3],
                     "metric": {"kind": "logit_diff", "a": 5, "b": 6, "position": null},
                     "sites": ["resid_pre", "head", "resid_pre"]}"#;
        let args = patching_args(ok).unwrap();
        assert_eq!(args.sites, vec![PatchSite::ResidPre, PatchSite::Head]);
        assert!(!args.request.naive);
        let bad_site = ok.replace("\"head\"", "\"heads\"");
        let e = patching_args(&bad_site).err().unwrap().to_string();
        assert!(e.contains("'heads'") && e.contains("allowed"), "{e}");
        let extra = ok.replace("\"sites\"", "\"batch\": 3, \"sites\"");
        assert!(patching_args(&extra).is_err());
    }
}
