//! The site's recent past for the site page's charts and `/api/v1/history`: a bounded
//! ring of samples, one per [`STEP_MS`] of site time, of the site node, every feed and
//! every row (measured, projected, budget, ceiling, GPU and mining power), the number of
//! miners curtailed, and the sheds and restores sent since the previous sample.
//!
//! Filled by [`crate::status::StatusHub::record_decision`] from the same rows the status
//! document shows (so a chart and `/api/v1/status` agree to the tenth of a kW), and by
//! `report_action` for the marks. Memory is bounded: [`SPAN_MS`] of samples at most,
//! values kept as `f32` (a 100 MW site with 60 feeds and rows: about 2 MiB).

use std::collections::VecDeque;

use rackwarden_config::{NodeKind, Site};
use serde::Serialize;

use crate::control::Millis;

/// One sample per this much site time.
pub const STEP_MS: Millis = 10_000;
/// Samples kept: three hours.
pub const SPAN_MS: Millis = 3 * 3_600_000;
const CAP: usize = (SPAN_MS / STEP_MS) as usize;

/// What one node showed at one sample (the status rows' figures).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub measured_kw: Option<f64>,
    pub projected_kw: f64,
    pub budget_kw: f64,
    pub ceiling_kw: f64,
    pub gpu_kw: f64,
    pub mining_kw: f64,
}

#[derive(Debug, Clone, Copy)]
struct Stored {
    measured: f32,
    projected: f32,
    budget: f32,
    ceiling: f32,
    gpu: f32,
    mining: f32,
}

#[derive(Debug)]
struct Sample {
    t_ms: Millis,
    points: Box<[Stored]>,
    curtailed: u32,
    sheds: u32,
    restores: u32,
}

/// The ring. Its node list is the site's (site, feeds, rows, in site order); a reload
/// that changes the list starts a new history.
#[derive(Debug, Default)]
pub struct History {
    /// Indices into `site.nodes` and their ids and kinds.
    nodes: Vec<(usize, String, &'static str)>,
    samples: VecDeque<Sample>,
    next_at: Millis,
    sheds: u32,
    restores: u32,
}

/// `/api/v1/history`: columns, as chart libraries take them (`null` where a node had no
/// fresh meter).
#[derive(Debug, Serialize, PartialEq)]
pub struct HistoryDoc {
    pub step_ms: Millis,
    pub span_ms: Millis,
    /// Site time of each sample (ms since the epoch).
    pub t_ms: Vec<Millis>,
    pub nodes: Vec<NodeSeries>,
    pub miners_curtailed: Vec<u32>,
    /// Shed commands sent since the previous sample.
    pub sheds: Vec<u32>,
    /// Restore commands sent since the previous sample.
    pub restores: Vec<u32>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct NodeSeries {
    pub id: String,
    pub kind: &'static str,
    pub measured_kw: Vec<Option<f64>>,
    pub projected_kw: Vec<f64>,
    pub budget_kw: Vec<f64>,
    pub ceiling_kw: Vec<f64>,
    pub gpu_kw: Vec<f64>,
    pub mining_kw: Vec<f64>,
}

/// Tenths of a kW, as the status document rounds (f32 keeps them exactly enough).
fn back(x: f32) -> f64 {
    (f64::from(x) * 10.0).round() / 10.0
}

fn stored(p: &Point) -> Stored {
    #[allow(clippy::cast_possible_truncation)] // kW figures, far inside f32's range
    let f = |x: f64| x as f32;
    Stored {
        measured: p.measured_kw.map_or(f32::NAN, f),
        projected: f(p.projected_kw),
        budget: f(p.budget_kw),
        ceiling: f(p.ceiling_kw),
        gpu: f(p.gpu_kw),
        mining: f(p.mining_kw),
    }
}

impl History {
    /// The nodes a site's history follows (site, feeds, rows).
    pub fn nodes_of(site: &Site) -> Vec<usize> {
        site.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.kind, NodeKind::Site | NodeKind::Feed | NodeKind::Row))
            .map(|(i, _)| i)
            .collect()
    }

    /// Follows `site` from now on; keeps the samples when its node list is unchanged.
    pub fn set_site(&mut self, site: &Site) {
        let nodes: Vec<(usize, String, &'static str)> = Self::nodes_of(site)
            .into_iter()
            .map(|i| (i, site.nodes[i].id.clone(), site.nodes[i].kind.name()))
            .collect();
        if nodes != self.nodes {
            *self = History {
                nodes,
                ..History::default()
            };
        }
    }

    /// Whether a decision at `now` is due to be sampled.
    pub fn due(&self, now: Millis) -> bool {
        !self.nodes.is_empty() && now >= self.next_at
    }

    /// Counts one command sent (a mark on the next sample).
    pub fn action(&mut self, shed: bool) {
        if shed {
            self.sheds = self.sheds.saturating_add(1);
        } else {
            self.restores = self.restores.saturating_add(1);
        }
    }

    /// Records a sample at `now` if one is due. `point(i)` gives node `i`'s figures.
    pub fn sample(&mut self, now: Millis, curtailed: usize, point: impl Fn(usize) -> Point) {
        if !self.due(now) {
            return;
        }
        self.next_at = now - now % STEP_MS + STEP_MS;
        let points = self
            .nodes
            .iter()
            .map(|&(i, ..)| stored(&point(i)))
            .collect();
        if self.samples.len() == CAP {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            t_ms: now,
            points,
            curtailed: u32::try_from(curtailed).unwrap_or(u32::MAX),
            sheds: std::mem::take(&mut self.sheds),
            restores: std::mem::take(&mut self.restores),
        });
    }

    /// The samples in `(to_ms - span_ms, to_ms]` (`to_ms` None: up to the latest).
    pub fn doc(&self, span_ms: Millis, to_ms: Option<Millis>) -> HistoryDoc {
        let to = to_ms.unwrap_or(Millis::MAX);
        let last = self
            .samples
            .iter()
            .rev()
            .find(|s| s.t_ms <= to)
            .map_or(0, |s| s.t_ms);
        let from = last.saturating_sub(span_ms);
        let picked: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.t_ms > from && s.t_ms <= to)
            .collect();
        let col = |j: usize, f: fn(&Stored) -> f32| -> Vec<f64> {
            picked.iter().map(|s| back(f(&s.points[j]))).collect()
        };
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .map(|(j, (_, id, kind))| NodeSeries {
                id: id.clone(),
                kind,
                measured_kw: picked
                    .iter()
                    .map(|s| {
                        let m = s.points[j].measured;
                        (!m.is_nan()).then(|| back(m))
                    })
                    .collect(),
                projected_kw: col(j, |p| p.projected),
                budget_kw: col(j, |p| p.budget),
                ceiling_kw: col(j, |p| p.ceiling),
                gpu_kw: col(j, |p| p.gpu),
                mining_kw: col(j, |p| p.mining),
            })
            .collect();
        HistoryDoc {
            step_ms: STEP_MS,
            span_ms: SPAN_MS,
            t_ms: picked.iter().map(|s| s.t_ms).collect(),
            nodes,
            miners_curtailed: picked.iter().map(|s| s.curtailed).collect(),
            sheds: picked.iter().map(|s| s.sheds).collect(),
            restores: picked.iter().map(|s| s.restores).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        rackwarden_config::load_str(
            include_str!("../../../examples/site.toml"),
            std::path::Path::new("site.toml"),
            std::path::Path::new("."),
        )
        .map_err(|e| e.to_string())
        .expect("example site")
    }

    fn point(kw: f64) -> Point {
        Point {
            measured_kw: (kw > 0.0).then_some(kw),
            projected_kw: kw + 0.04,
            budget_kw: 456.0,
            ceiling_kw: 475.0,
            gpu_kw: kw / 2.0,
            mining_kw: kw / 4.0,
        }
    }

    #[test]
    fn samples_once_per_step_with_marks_and_a_bounded_span() {
        let site = site();
        let mut h = History::default();
        h.set_site(&site);
        let n = History::nodes_of(&site).len();
        assert!(n >= 3, "site, feeds and rows followed");
        // Decisions every second for 4 hours of site time; sheds in one step.
        let t0 = 1_800_000_000_000;
        for s in 0..4 * 3600 {
            let now = t0 + s * 1000;
            if s == 125 {
                h.action(true);
                h.action(true);
                h.action(false);
            }
            #[allow(clippy::cast_precision_loss)]
            h.sample(now, usize::try_from(s % 7).unwrap_or(0), |i| {
                point((s % 100) as f64 + i as f64)
            });
        }
        let doc = h.doc(SPAN_MS, None);
        assert_eq!(doc.t_ms.len(), CAP, "three hours of 10 s samples kept");
        assert!(doc.t_ms.windows(2).all(|w| w[1] - w[0] == STEP_MS));
        assert_eq!(*doc.t_ms.last().unwrap_or(&0), t0 + (4 * 3600 - 10) * 1000);
        // The marks were taken by the sample after them (the first hour is gone).
        assert_eq!(doc.sheds.iter().sum::<u32>(), 0);
        let early = {
            let mut h2 = History::default();
            h2.set_site(&site);
            for s in 0..200u64 {
                if s == 125 {
                    h2.action(true);
                    h2.action(true);
                    h2.action(false);
                }
                h2.sample(t0 + s * 1000, 0, |_| point(1.0));
            }
            h2.doc(SPAN_MS, None)
        };
        let at = early
            .t_ms
            .iter()
            .position(|&t| t == t0 + 130_000)
            .unwrap_or(usize::MAX);
        assert_eq!(early.sheds.get(at), Some(&2));
        assert_eq!(early.restores.get(at), Some(&1));
        assert_eq!(early.sheds.iter().sum::<u32>(), 2);
        // A window ending earlier, one hour long.
        let to = t0 + 3 * 3_600_000;
        let hour = h.doc(3_600_000, Some(to));
        assert_eq!(hour.t_ms.len(), 360);
        assert_eq!(hour.t_ms.last(), Some(&to));
        assert_eq!(hour.nodes.len(), n);
        assert!(hour.nodes.iter().all(|s| s.projected_kw.len() == 360));
        // Values come back at the status document's tenth of a kW; no meter is null.
        let feed = &hour.nodes[1];
        assert!(feed.projected_kw.iter().all(|v| (v * 10.0).fract() == 0.0));
        assert_eq!(feed.budget_kw[0], 456.0);
    }

    #[test]
    fn missing_meter_is_null_and_a_new_node_list_starts_over() {
        let mut site = site();
        let mut h = History::default();
        h.set_site(&site);
        h.sample(10_000, 0, |_| point(0.0));
        let doc = h.doc(SPAN_MS, None);
        assert_eq!(doc.nodes[0].measured_kw, vec![None]);
        // Same nodes: kept. Fewer nodes: a new history.
        h.set_site(&site);
        assert_eq!(h.doc(SPAN_MS, None).t_ms.len(), 1);
        site.nodes.retain(|n| n.kind != NodeKind::Row);
        h.set_site(&site);
        assert!(h.doc(SPAN_MS, None).t_ms.is_empty());
    }
}
