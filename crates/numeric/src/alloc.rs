//! Size-targeted allocation: one option per item (a storage type per tensor), each with a size
//! and a predicted error, chosen to minimise the summed error under a total size.
//!
//! Lagrangian / greedy exchange on each item's lower convex hull: every item starts at its
//! smallest option; the upgrade with the largest error decrease per byte is taken while it
//! fits. On convex hulls that is the optimum of the relaxed problem, missing the budget by less
//! than one upgrade; the bytes left over then go to the best-value upgrades that still fit (hull
//! or not). Deterministic: ties break on the item's index.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// One way to store an item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub bytes: u64,
    pub error: f64,
}

/// The options of an item on its lower convex hull of (bytes, error), by increasing size: the
/// smallest option, then each option that buys the most error decrease per byte.
fn hull(options: &[Choice]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..options.len()).collect();
    idx.sort_by(|&a, &b| {
        options[a]
            .bytes
            .cmp(&options[b].bytes)
            .then(options[a].error.total_cmp(&options[b].error))
            .then(a.cmp(&b))
    });
    // the best error at each size, then only options that improve on every smaller one
    let mut pareto: Vec<usize> = Vec::new();
    for i in idx {
        if pareto
            .last()
            .is_some_and(|&p| options[p].bytes == options[i].bytes)
        {
            continue;
        }
        if pareto
            .last()
            .is_none_or(|&p| options[i].error < options[p].error)
        {
            pareto.push(i);
        }
    }
    let mut h: Vec<usize> = Vec::new();
    for i in pareto {
        while h.len() >= 2 {
            let (a, b) = (options[h[h.len() - 2]], options[h[h.len() - 1]]);
            let c = options[i];
            // b lies on or above the segment a–c: not on the lower hull
            let lhs = (b.error - a.error) * (c.bytes - a.bytes) as f64;
            let rhs = (c.error - a.error) * (b.bytes - a.bytes) as f64;
            if lhs >= rhs {
                h.pop();
            } else {
                break;
            }
        }
        h.push(i);
    }
    h
}

/// An upgrade of item `item` from its current hull point to the next: error decrease per byte.
struct Step {
    slope: f64,
    item: usize,
}

impl PartialEq for Step {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Step {}
impl PartialOrd for Step {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Step {
    fn cmp(&self, o: &Self) -> Ordering {
        // the steepest first; on ties the lower index
        self.slope
            .total_cmp(&o.slope)
            .then_with(|| o.item.cmp(&self.item))
    }
}

/// The option chosen for each item, or `None` when even the smallest options exceed `budget`
/// (or an item has none).
pub fn choose(items: &[Vec<Choice>], budget: u64) -> Option<Vec<usize>> {
    let hulls: Vec<Vec<usize>> = items.iter().map(|o| hull(o)).collect();
    if hulls.iter().any(|h| h.is_empty()) {
        return None;
    }
    let mut pos = vec![0usize; items.len()];
    let mut used: u64 = 0;
    for (o, h) in items.iter().zip(&hulls) {
        used = used.checked_add(o[h[0]].bytes)?;
    }
    if used > budget {
        return None;
    }
    let step = |i: usize, p: usize| -> Option<Step> {
        let h = &hulls[i];
        let (a, b) = (items[i][*h.get(p)?], items[i][*h.get(p + 1)?]);
        Some(Step {
            slope: (a.error - b.error) / (b.bytes - a.bytes) as f64,
            item: i,
        })
    };
    let mut heap: BinaryHeap<Step> = (0..items.len()).filter_map(|i| step(i, 0)).collect();
    while let Some(s) = heap.pop() {
        let i = s.item;
        let h = &hulls[i];
        let extra = items[i][h[pos[i] + 1]].bytes - items[i][h[pos[i]]].bytes;
        if used + extra > budget {
            // this item cannot grow along its hull; others may still fit
            continue;
        }
        used += extra;
        pos[i] += 1;
        if let Some(n) = step(i, pos[i]) {
            heap.push(n);
        }
    }
    let mut pick: Vec<usize> = (0..items.len()).map(|i| hulls[i][pos[i]]).collect();
    // leftover bytes: the upgrade (to any larger option) with the best error decrease per byte
    // that fits, repeatedly
    loop {
        let mut best: Option<(f64, usize, usize)> = None;
        for (i, o) in items.iter().enumerate() {
            let cur = o[pick[i]];
            for (k, c) in o.iter().enumerate() {
                if c.bytes <= cur.bytes
                    || c.error >= cur.error
                    || used + (c.bytes - cur.bytes) > budget
                {
                    continue;
                }
                let v = (cur.error - c.error) / (c.bytes - cur.bytes) as f64;
                if best.is_none_or(|(bv, _, _)| v > bv) {
                    best = Some((v, i, k));
                }
            }
        }
        let Some((_, i, k)) = best else { break };
        used += items[i][k].bytes - items[i][pick[i]].bytes;
        pick[i] = k;
    }
    Some(pick)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(bytes: u64, error: f64) -> Choice {
        Choice { bytes, error }
    }

    /// Exhaustive search over every combination: the reference on small problems.
    fn brute(items: &[Vec<Choice>], budget: u64) -> Option<f64> {
        let mut best: Option<f64> = None;
        let mut idx = vec![0usize; items.len()];
        loop {
            let bytes: u64 = idx.iter().zip(items).map(|(&k, o)| o[k].bytes).sum();
            if bytes <= budget {
                let e: f64 = idx.iter().zip(items).map(|(&k, o)| o[k].error).sum();
                if best.is_none_or(|b| e < b) {
                    best = Some(e);
                }
            }
            let mut j = 0;
            loop {
                if j == items.len() {
                    return best;
                }
                idx[j] += 1;
                if idx[j] < items[j].len() {
                    break;
                }
                idx[j] = 0;
                j += 1;
            }
        }
    }

    #[test]
    fn hull_drops_dominated_and_concave_options() {
        // (30, 5) is dominated by (20, 4), (25, 9) by (20, 4) too
        let o = [c(10, 10.0), c(20, 4.0), c(30, 5.0), c(40, 0.0), c(25, 9.0)];
        let h = hull(&o);
        let sizes: Vec<u64> = h.iter().map(|&i| o[i].bytes).collect();
        assert_eq!(sizes, [10, 20, 40]);
        // (20, 7) lies above the segment (10, 10)–(40, 0), (20, 6) below it
        let o = [c(10, 10.0), c(20, 7.0), c(40, 0.0)];
        assert_eq!(hull(&o).len(), 2);
        let o = [c(10, 10.0), c(20, 6.0), c(40, 0.0)];
        assert_eq!(hull(&o).len(), 3);
    }

    /// Random problems: within the budget, never below the exhaustive optimum, and close to
    /// it (the greedy's gap is at most one item's error range; here it is checked loosely and
    /// on average).
    #[test]
    fn near_the_exhaustive_optimum_on_random_problems() {
        let mut s = 0x9e3779b97f4a7c15u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let (mut gap, mut n) = (0.0, 0);
        for _ in 0..300 {
            let items: Vec<Vec<Choice>> = (0..1 + rnd() % 5)
                .map(|_| {
                    // sizes up, errors down, like bits per weight against quantization error
                    let mut b = 10 + rnd() % 20;
                    let mut e = 100.0 + (rnd() % 100) as f64;
                    (0..1 + rnd() % 5)
                        .map(|_| {
                            let ch = c(b, e);
                            b += 1 + rnd() % 30;
                            e *= 0.2 + (rnd() % 70) as f64 / 100.0;
                            ch
                        })
                        .collect()
                })
                .collect();
            let min: u64 = items.iter().map(|o| o[0].bytes).sum();
            let max: u64 = items.iter().map(|o| o.last().unwrap().bytes).sum();
            let budget = min + rnd() % (max - min + 10);
            let Some(pick) = choose(&items, budget) else {
                panic!("feasible: {budget} >= {min}")
            };
            let bytes: u64 = pick.iter().zip(&items).map(|(&k, o)| o[k].bytes).sum();
            assert!(bytes <= budget);
            let e: f64 = pick.iter().zip(&items).map(|(&k, o)| o[k].error).sum();
            let opt = brute(&items, budget).unwrap();
            assert!(e >= opt - 1e-9);
            gap += (e - opt) / opt.max(1e-12);
            n += 1;
        }
        assert!(gap / (n as f64) < 0.05, "mean gap {}", gap / n as f64);
        assert_eq!(choose(&[vec![c(10, 1.0)]], 9), None);
        assert_eq!(choose(&[vec![c(10, 1.0), c(20, 0.5)]], 1000), Some(vec![1]));
    }
}
