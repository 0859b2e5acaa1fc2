//! The report as one self-contained HTML page: no network (a Content-Security-Policy forbids
//! it), no external script or font. Summary, gates, evaluation and calibration figures, the
//! error of each tensor kind across depth drawn as SVG, the size by storage type, the sortable
//! per-tensor table, and the run's tool version, command line and input fingerprints.

use super::{human_bytes, Report, ReportRow};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Text safe in HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The kinds of linear a depth plot separates, in legend order.
const KINDS: [&str; 8] = ["q", "k", "v", "o", "gate", "up", "down", "experts"];
const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// (layer, kind) of a decoder-layer weight, from Hugging Face or GGUF names.
pub(super) fn layer_kind(name: &str) -> Option<(usize, &'static str)> {
    let rest = name
        .strip_prefix("model.layers.")
        .or_else(|| name.strip_prefix("blk."))
        .or_else(|| name.split_once(".layers.").map(|(_, r)| r))?;
    let (idx, tail) = rest.split_once('.')?;
    let layer: usize = idx.parse().ok()?;
    let kind = if tail.contains("experts") || tail.contains("_exps") {
        "experts"
    } else if tail.contains("q_proj") || tail.starts_with("attn_q.") {
        "q"
    } else if tail.contains("k_proj") || tail.starts_with("attn_k.") {
        "k"
    } else if tail.contains("v_proj") || tail.starts_with("attn_v.") {
        "v"
    } else if tail.contains("o_proj") || tail.starts_with("attn_output.") {
        "o"
    } else if tail.contains("gate_proj") || tail.starts_with("ffn_gate.") {
        "gate"
    } else if tail.contains("up_proj") || tail.starts_with("ffn_up.") {
        "up"
    } else if tail.contains("down_proj") || tail.starts_with("ffn_down.") {
        "down"
    } else {
        return None;
    };
    Some((layer, kind))
}

/// `value` of each lossy decoder-layer weight, by kind, in layer order.
type Series = BTreeMap<usize, Vec<(usize, f64)>>;

fn series(rows: &[ReportRow], value: impl Fn(f64) -> f64) -> Series {
    let mut s: Series = BTreeMap::new();
    for r in rows {
        let Some(sqnr) = r
            .error
            .as_ref()
            .filter(|e| !e.exact())
            .and_then(|e| e.sqnr_db)
        else {
            continue;
        };
        if let Some((layer, kind)) = layer_kind(&r.tensor) {
            let k = KINDS.iter().position(|x| *x == kind).expect("a known kind");
            s.entry(k).or_default().push((layer, value(sqnr)));
        }
    }
    for v in s.values_mut() {
        v.sort_by_key(|p| p.0);
    }
    s
}

/// A line plot of `s` (x: layer, y: the value), one polyline and one point per layer per kind.
fn plot(id: &str, title: &str, unit: &str, s: &Series) -> String {
    let (w, h) = (760.0, 300.0);
    let (ml, mr, mt, mb) = (64.0, 120.0, 28.0, 40.0);
    let pts: Vec<(usize, f64)> = s.values().flatten().copied().collect();
    let mut o = String::new();
    if pts.is_empty() {
        return format!(
            "<p class=\"muted\">{}: no decoder-layer weights were quantized.</p>\n",
            esc(title)
        );
    }
    let xmax = pts.iter().map(|p| p.0).max().unwrap_or(0).max(1) as f64;
    let (mut ymin, mut ymax) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    if ymax - ymin < 1e-9 {
        ymin -= 0.5;
        ymax += 0.5;
    }
    let pad = (ymax - ymin) * 0.08;
    let (ymin, ymax) = (ymin - pad, ymax + pad);
    let x = |l: usize| ml + (w - ml - mr) * l as f64 / xmax;
    let y = |v: f64| mt + (h - mt - mb) * (1.0 - (v - ymin) / (ymax - ymin));
    let _ = writeln!(
        o,
        "<svg id=\"{id}\" class=\"plot\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{}\">",
        esc(title)
    );
    let _ = writeln!(
        o,
        "<text x=\"{ml}\" y=\"16\" class=\"ptitle\">{}</text>",
        esc(title)
    );
    // axes and ticks
    let _ = writeln!(
        o,
        "<line x1=\"{ml}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" class=\"axis\"/><line x1=\"{ml}\" y1=\"{mt}\" x2=\"{ml}\" y2=\"{}\" class=\"axis\"/>",
        h - mb,
        w - mr,
        h - mb,
        h - mb
    );
    for i in 0..=4 {
        let v = ymin + (ymax - ymin) * i as f64 / 4.0;
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text><line x1=\"{ml}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" class=\"grid\"/>",
            ml - 6.0,
            y(v) + 4.0,
            fmt_tick(v),
            y(v),
            w - mr,
            y(v)
        );
    }
    let step = (xmax as usize).div_ceil(10).max(1);
    for l in (0..=xmax as usize).step_by(step) {
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{l}</text>",
            x(l),
            h - mb + 16.0
        );
    }
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">layer</text><text x=\"14\" y=\"{:.1}\" class=\"tick\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">{}</text>",
        (ml + w - mr) / 2.0,
        h - 6.0,
        (mt + h - mb) / 2.0,
        (mt + h - mb) / 2.0,
        esc(unit)
    );
    for (li, (&k, v)) in s.iter().enumerate() {
        let (kind, color) = (KINDS[k], COLORS[k]);
        let _ = writeln!(o, "<g class=\"series\" data-kind=\"{kind}\">");
        let line: Vec<String> = v
            .iter()
            .map(|&(l, val)| format!("{:.1},{:.1}", x(l), y(val)))
            .collect();
        let _ = writeln!(
            o,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>",
            line.join(" ")
        );
        for &(l, val) in v {
            let _ = writeln!(
                o,
                "<circle class=\"pt\" data-layer=\"{l}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{color}\"><title>layer {l} {kind}: {} {}</title></circle>",
                x(l),
                y(val),
                fmt_tick(val),
                esc(unit)
            );
        }
        let ly = mt + 16.0 * li as f64;
        let _ = writeln!(
            o,
            "<rect x=\"{}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"{:.1}\" class=\"tick\">{kind}</text>",
            w - mr + 16.0,
            ly,
            w - mr + 34.0,
            ly + 10.0
        );
        let _ = writeln!(o, "</g>");
    }
    o.push_str("</svg>\n");
    o
}

fn fmt_tick(v: f64) -> String {
    if v != 0.0 && (v.abs() < 0.01 || v.abs() >= 1e5) {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// A table cell with a sort key (`data-v`); empty for a missing number.
fn num(v: Option<f64>, shown: impl Fn(f64) -> String) -> String {
    match v {
        Some(v) if v.is_finite() => format!("<td class=\"n\" data-v=\"{v}\">{}</td>", shown(v)),
        _ => "<td class=\"n\" data-v=\"\">–</td>".into(),
    }
}

const STYLE: &str = "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px;margin:0 0 12px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
#tensor-table th{cursor:pointer;user-select:none;position:sticky;top:0;background:#f6f6f6}
th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:0}dt{color:#666}dd{margin:0}
.bar{background:#4a7bd0;height:10px;display:inline-block}.muted{color:#777}
.fail{color:#b00020;font-weight:600}.pass{color:#1b7f3b;font-weight:600}
code{font-size:12px}.axis{stroke:#444}.grid{stroke:#eee}.tick{font-size:11px;fill:#555}.ptitle{font-size:13px;fill:#222}";

/// Click a header: sort the rows by that column (numbers by `data-v`, missing ones last),
/// ascending, then descending.
const SCRIPT: &str = "(function(){
var t=document.getElementById('tensor-table');if(!t)return;
var hs=t.tHead.rows[0].cells;
Array.prototype.forEach.call(hs,function(th,i){th.addEventListener('click',function(){
var asc=th.getAttribute('aria-sort')!=='ascending';
Array.prototype.forEach.call(hs,function(h){h.removeAttribute('aria-sort');});
th.setAttribute('aria-sort',asc?'ascending':'descending');
var numeric=th.classList.contains('n');var b=t.tBodies[0];
var rows=Array.prototype.slice.call(b.rows);
function key(r){var c=r.cells[i];return numeric?parseFloat(c.getAttribute('data-v')):c.textContent;}
rows.sort(function(x,y){var a=key(x),c=key(y);
if(numeric){var na=isNaN(a),nc=isNaN(c);if(na||nc)return na-nc;return asc?a-c:c-a;}
return asc?a.localeCompare(c):c.localeCompare(a);});
rows.forEach(function(r){b.appendChild(r);});});});})();";

pub(super) fn render(r: &Report) -> String {
    let mut o = String::new();
    let t = &r.totals;
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>quantsmith report: {}</title>\n<style>{STYLE}</style></head><body>\n",
        esc(&r.output)
    );
    let _ = writeln!(
        o,
        "<h1>quantsmith report: <code>{}</code></h1>",
        esc(&r.output)
    );
    o.push_str("<section id=\"summary\"><dl>\n");
    let mut dd = |k: &str, v: String| {
        let _ = writeln!(o, "<dt>{}</dt><dd>{v}</dd>", esc(k));
    };
    dd("command", esc(&r.command));
    dd("input", format!("<code>{}</code>", esc(&r.input)));
    dd("output", format!("<code>{}</code>", esc(&r.output)));
    if let Some(tg) = &r.target {
        dd("target", esc(tg));
    }
    dd(
        "tensors",
        format!("{} ({} changed, {} lossy)", t.tensors, t.changed, t.lossy),
    );
    dd(
        "size",
        format!(
            "{} → {} ({:.2}×), {:.2} bits per weight over the changed tensors",
            human_bytes(t.bytes_in),
            human_bytes(t.bytes_out),
            t.compression,
            t.bits_per_weight_changed
        ),
    );
    if let Some(e) = &t.error {
        dd(
            "pooled error",
            format!(
                "SQNR {} dB · relative error {} · RMSE {:.3e} · max |error| {:.3e}",
                e.sqnr_db.map_or("∞".into(), |v| format!("{v:.2}")),
                e.sqnr_db
                    .map_or("0".into(), |v| format!("{:.4}", 10f64.powf(-v / 20.0))),
                e.rmse,
                e.max_abs_err
            ),
        );
    }
    o.push_str("</dl></section>\n");

    if let Some(g) = &r.gates {
        o.push_str("<section id=\"gates\"><h2>Quality gates</h2>\n");
        let _ = writeln!(
            o,
            "<p class=\"{}\">{}</p><p class=\"muted\">{}</p>",
            if g.passed { "pass" } else { "fail" },
            if g.passed {
                "passed".to_string()
            } else {
                format!("FAILED: {} violations", g.violations.len())
            },
            esc(&g.checked.join(" · "))
        );
        if !g.violations.is_empty() {
            o.push_str("<table><thead><tr><th>gate</th><th>on</th><th class=\"n\">value</th><th class=\"n\">limit</th></tr></thead><tbody>\n");
            for v in &g.violations {
                let _ = writeln!(
                    o,
                    "<tr><td>{}</td><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    esc(v.gate),
                    esc(&v.subject),
                    fmt_tick(v.value),
                    v.limit
                );
            }
            o.push_str("</tbody></table>\n");
        }
        o.push_str("</section>\n");
    }
    if let Some(e) = &r.eval {
        o.push_str("<section id=\"eval\"><h2>Evaluation</h2><dl>\n");
        let _ = writeln!(
            o,
            "<dt>text</dt><dd>{} chunks of {} tokens, {} predictions scored</dd><dt>perplexity</dt><dd>{:.4} ± {:.4}</dd>",
            e.chunks, e.ctx, e.tokens_scored, e.ppl, e.ppl_se
        );
        if let (Some(pa), Some(kl), Some(km), Some(t1)) =
            (e.ppl_against, e.kld_mean, e.kld_max, e.top1_agreement)
        {
            let _ = writeln!(
                o,
                "<dt>original's perplexity</dt><dd>{pa:.4} ({:+.2} %)</dd><dt>mean KL divergence</dt><dd>{kl:.6} ± {:.6} (max {km:.4})</dd><dt>same top-1 token</dt><dd>{:.2} %</dd>",
                100.0 * (e.ppl / pa - 1.0),
                e.kld_se.unwrap_or(0.0),
                100.0 * t1
            );
        }
        o.push_str("</dl></section>\n");
    }
    if let Some(c) = &r.calibration {
        o.push_str("<section id=\"calibration\"><h2>Calibration</h2><dl>\n");
        let _ = writeln!(
            o,
            "<dt>method</dt><dd>{}</dd><dt>data</dt><dd>{}{}</dd><dt>sequences</dt><dd>{} of {} tokens fitted ({} requested), {} held out{}</dd>",
            esc(c.method),
            esc(c.source),
            match (c.generation_secs, c.shared) {
                (Some(s), _) => format!(", written by the model in {s:.1} s"),
                (None, true) => ", made for an earlier job of the batch and reused".into(),
                (None, false) => String::new(),
            },
            c.fit_sequences,
            c.seq_len,
            c.requested,
            c.held_sequences,
            esc(&super::pass_note(c))
        );
        o.push_str("</dl></section>\n");
    }

    o.push_str("<section id=\"depth\"><h2>Error across depth</h2>\n");
    o.push_str(&plot(
        "plot-sqnr",
        "SQNR by layer and tensor kind (higher is better)",
        "dB",
        &series(&r.rows, |v| v),
    ));
    o.push_str(&plot(
        "plot-rel",
        "Relative error ‖x − x̂‖ / ‖x‖ by layer and tensor kind",
        "relative error",
        &series(&r.rows, |v| 10f64.powf(-v / 20.0)),
    ));
    o.push_str("</section>\n");

    // size by storage
    let mut by: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
    for row in &r.rows {
        let e = by.entry(row.storage.as_str()).or_default();
        e.0 += 1;
        e.1 += row.bytes_in;
        e.2 += row.bytes_out;
    }
    let mut by: Vec<_> = by.into_iter().collect();
    by.sort_by(|a, b| b.1 .2.cmp(&a.1 .2).then(a.0.cmp(b.0)));
    o.push_str("<section id=\"sizes\"><h2>Size by storage type</h2><table><thead><tr><th>storage</th><th class=\"n\">tensors</th><th class=\"n\">bytes in</th><th class=\"n\">bytes out</th><th class=\"n\">share</th><th></th></tr></thead><tbody>\n");
    let total_out = t.bytes_out.max(1) as f64;
    for (st, (n, bi, bo)) in &by {
        let share = *bo as f64 / total_out;
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td class=\"n\">{n}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1} %</td><td><span class=\"bar\" style=\"width:{:.0}px\"></span></td></tr>",
            esc(st),
            human_bytes(*bi),
            human_bytes(*bo),
            100.0 * share,
            200.0 * share
        );
    }
    o.push_str("</tbody></table></section>\n");

    // the per-tensor table (the report's order: worst first)
    let calibrated = r.rows.iter().any(|x| x.layer_output_error.is_some());
    o.push_str("<section id=\"tensors\"><h2>Tensors</h2><p class=\"muted\">Click a column to sort.</p><table id=\"tensor-table\"><thead><tr>");
    o.push_str("<th>tensor</th><th>storage</th><th class=\"n\">layer</th><th>kind</th><th class=\"n\">size</th><th class=\"n\">bits/weight</th><th class=\"n\">SQNR dB</th><th class=\"n\">relative error</th><th class=\"n\">RMSE</th><th class=\"n\">max |error|</th><th class=\"n\">cosine</th>");
    if calibrated {
        o.push_str("<th class=\"n\">layer-output error RTN</th><th class=\"n\">layer-output error method</th>");
    }
    o.push_str("<th>note</th></tr></thead><tbody>\n");
    for row in &r.rows {
        let e = row.error.as_ref();
        let lk = layer_kind(&row.tensor);
        let exact = e.is_some_and(|e| e.exact());
        let _ = write!(
            o,
            "<tr><td><code>{}</code></td><td>{}</td>{}<td>{}</td>{}{}",
            esc(&row.tensor),
            esc(&row.storage),
            num(lk.map(|l| l.0 as f64), |v| format!("{v}")),
            lk.map_or("", |l| l.1),
            num(Some(row.bytes_out as f64), |v| human_bytes(v as u64)),
            num(Some(row.bits_per_weight), |v| format!("{v:.2}")),
        );
        // an exact tensor sorts above every lossy one
        let sq = if exact {
            Some(1e9)
        } else {
            e.and_then(|e| e.sqnr_db)
        };
        let _ = write!(
            o,
            "{}{}{}{}{}",
            num(sq, |v| if v >= 1e9 {
                "exact".into()
            } else {
                format!("{v:.2}")
            }),
            num(
                e.map(|e| if exact {
                    0.0
                } else {
                    e.sqnr_db.map_or(f64::NAN, |s| 10f64.powf(-s / 20.0))
                }),
                |v| format!("{v:.4}")
            ),
            num(e.map(|e| e.rmse), |v| format!("{v:.3e}")),
            num(e.map(|e| e.max_abs_err), |v| format!("{v:.3e}")),
            num(e.map(|e| e.cosine), |v| format!("{v:.6}")),
        );
        if calibrated {
            let l = row.layer_output_error.as_ref();
            let _ = write!(
                o,
                "{}{}",
                num(l.map(|l| l.rtn), |v| format!("{v:.3e}")),
                num(l.map(|l| l.calibrated), |v| format!("{v:.3e}"))
            );
        }
        let _ = writeln!(
            o,
            "<td>{}</td></tr>",
            esc(row
                .note
                .as_deref()
                .unwrap_or(if e.is_none() { "copied" } else { "" }))
        );
    }
    o.push_str("</tbody></table></section>\n");

    o.push_str("<section id=\"run\"><h2>Run</h2><dl>\n");
    let _ = writeln!(o, "<dt>report schema</dt><dd>{}</dd>", r.schema_version);
    if let Some(run) = &r.run {
        let _ = writeln!(
            o,
            "<dt>tool</dt><dd>quantsmith {}</dd><dt>command line</dt><dd><code>{}</code></dd>",
            esc(&run.tool_version),
            esc(&run.command_line.join(" "))
        );
        o.push_str("</dl><table><thead><tr><th>input</th><th class=\"n\">bytes</th><th>SHA-256 of the first MiB</th></tr></thead><tbody>\n");
        for f in &run.inputs {
            let _ = writeln!(
                o,
                "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td><code>{}</code></td></tr>",
                esc(&f.path),
                f.size,
                esc(&f.head_sha256)
            );
        }
        o.push_str("</tbody></table>\n");
    } else {
        o.push_str("</dl>\n");
    }
    o.push_str("</section>\n");
    let _ = write!(o, "<script>{SCRIPT}</script>\n</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_kinds_from_both_namings() {
        assert_eq!(
            layer_kind("model.layers.12.self_attn.q_proj.weight"),
            Some((12, "q"))
        );
        assert_eq!(layer_kind("blk.3.ffn_down.weight"), Some((3, "down")));
        assert_eq!(layer_kind("blk.0.attn_output.weight"), Some((0, "o")));
        assert_eq!(layer_kind("blk.7.ffn_up_exps.weight"), Some((7, "experts")));
        assert_eq!(
            layer_kind("model.layers.1.mlp.experts.3.gate_proj.weight"),
            Some((1, "experts"))
        );
        assert_eq!(layer_kind("model.layers.1.input_layernorm.weight"), None);
        assert_eq!(layer_kind("model.embed_tokens.weight"), None);
        assert_eq!(layer_kind("blk.x.attn_q.weight"), None);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
