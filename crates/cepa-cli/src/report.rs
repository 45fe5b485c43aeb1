//! `report.html`: one self-contained page (inline CSS and SVG, images as base64 `data:` URIs, no
//! network): verdict, per-class table, anomaly-index bar chart, the estimated trigger, clean vs
//! triggered examples, the per-sample perturbations and the resolved config.

use std::fmt::Write as _;
use std::path::Path;

use cepa::data::to_png_bytes;
use cepa::detect::invert::Inversion;
use cepa::detect::nc::NcReport;
use cepa::detect::reference::ReferenceComparison;
use cepa::detect::{ScanReport, ScreenRole};
use cepa::model::ResolvedSpec;

/// One clean image and the same image with the estimated trigger, with predictions.
pub struct Example {
    pub label: usize,
    pub clean_pred: usize,
    pub triggered_pred: usize,
    pub clean_png: Vec<u8>,
    pub triggered_png: Vec<u8>,
}

/// The estimated trigger and what it does.
pub struct TriggerSection<'a> {
    pub inversion: &'a Inversion,
    pub trigger_png: Vec<u8>,
    pub mask_png: Option<Vec<u8>>,
    pub examples: Vec<Example>,
}

/// Stage 1's per-sample perturbations for one putative target.
pub struct Perturbations {
    pub class: usize,
    /// Caption, perturbed image, perturbation.
    pub items: Vec<(String, Vec<u8>, Vec<u8>)>,
}

/// Everything on the page; sections without data are left out.
pub struct Page<'a> {
    pub title: String,
    pub model: &'a Path,
    pub spec: &'a ResolvedSpec,
    pub scan: Option<&'a ScanReport>,
    pub trigger: Option<TriggerSection<'a>>,
    pub perturbations: Option<Perturbations>,
    /// Neural Cleanse run beside CEPA (`scan --baseline nc`).
    pub baseline: Option<&'a NcReport>,
    /// The combined verdict of `scan --verdict either|agree`: whether backdoored, and its
    /// sentence. When present it is the page's verdict, shown first, and CEPA's is labelled.
    pub combined: Option<(bool, String)>,
    /// CEPA's per-class indices against scans of clean reference models (`scan --reference`).
    pub reference: Option<&'a ReferenceComparison>,
    /// The resolved configuration, shown as pretty JSON.
    pub config: serde_json::Value,
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}\
.wide{overflow-x:auto}table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}\
th{background:#f3f3f3}tr.target td{background:#fde2e2;font-weight:bold}\
.verdict{font-size:1.2em;padding:.6em 1em;border-radius:6px;display:inline-block}\
.bad{background:#fde2e2;color:#900}.ok{background:#e2f5e2;color:#060}.caution{background:#fff4d6;color:#6b4700;padding:.4em .8em;border-radius:6px}\
img.px{image-rendering:pixelated;width:96px;height:96px;border:1px solid #ccc;background:#888}\
figure{display:inline-block;margin:.3em;text-align:center;font-size:.8em}\
.flip{color:#900;font-weight:bold}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:.8em}\
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}";

/// Render the page.
pub fn render(p: &Page) -> String {
    let mut h = String::new();
    let _ = write_page(&mut h, p);
    h
}

fn write_page(h: &mut String, p: &Page) -> std::fmt::Result {
    writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body>",
        esc(&p.title)
    )?;
    writeln!(h, "<h1>{}</h1>", esc(&p.title))?;
    writeln!(
        h,
        "<dl><dt>model</dt><dd>{}</dd><dt>spec</dt><dd>{}</dd>",
        esc(&p.model.display().to_string()),
        esc(&p.spec.summary())
    )?;
    if let Some(s) = p.scan {
        writeln!(
            h,
            "<dt>layers</dt><dd>{} ({})</dd><dt>images</dt><dd>{} per class (+{} held out) from {}</dd><dt>time</dt><dd>{:.1} s, cepa {}</dd>",
            esc(&s.layer),
            esc(&s.layer_rule),
            s.images.per_class,
            s.images.holdout_per_class,
            esc(&s.images.source),
            s.seconds,
            esc(&s.version)
        )?;
    }
    writeln!(h, "</dl>")?;
    // The verdict that sets the exit status comes first: the combined one when there is one,
    // with CEPA's own below it, labelled.
    if let Some((bad, text)) = &p.combined {
        let class = if *bad { "bad" } else { "ok" };
        writeln!(h, "<p class=\"verdict {class}\">{}</p>", esc(text))?;
    }
    if let Some(s) = p.scan {
        verdict(h, s, p.combined.is_some())?;
    }
    if let Some(t) = &p.trigger {
        trigger(h, t)?;
    }
    if let Some(px) = &p.perturbations {
        writeln!(
            h,
            "<h2>Per-sample perturbations towards class {} (stage 1)</h2>\n<p>Each pair: the perturbed image and its perturbation (mid-grey = 0, scaled to its largest magnitude).</p><div>",
            px.class
        )?;
        for (caption, perturbed, delta) in &px.items {
            writeln!(
                h,
                "<figure>{}{}<figcaption>{}</figcaption></figure>",
                img(perturbed, "perturbed"),
                img(delta, "perturbation"),
                esc(caption)
            )?;
        }
        writeln!(h, "</div>")?;
    }
    if let Some(c) = p.reference {
        reference(h, c)?;
    }
    if let Some(nc) = p.baseline {
        baseline(h, nc, p.scan.and_then(|s| s.target), p.combined.is_some())?;
    }
    let config = serde_json::to_string_pretty(&p.config).unwrap_or_default();
    writeln!(
        h,
        "<h2>Resolved configuration</h2>\n<pre>{}</pre>\n</body></html>",
        esc(&config)
    )
}

/// CEPA's per-class indices beside the reference clean scans' means, and the notes on them.
fn reference(h: &mut String, c: &ReferenceComparison) -> std::fmt::Result {
    writeln!(
        h,
        "<h2>Against {} reference clean scan(s)</h2>\n<p>{}. A decision aid: the verdict does not \
         use it.</p>",
        c.files.len(),
        esc(&c.files.join(", "))
    )?;
    writeln!(
        h,
        "<div class=\"wide\"><table><tr><th>class</th><th>index here</th><th>reference mean</th>\
         <th>above the references</th></tr>"
    )?;
    for k in &c.classes {
        let row = if k.class == c.most_anomalous {
            " class=\"target\""
        } else {
            ""
        };
        writeln!(
            h,
            "<tr{row}><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            k.class, k.index, k.reference_mean, k.adjusted
        )?;
    }
    writeln!(h, "</table></div>")?;
    for n in &c.notes {
        writeln!(h, "<p>{}</p>", esc(n))?;
    }
    Ok(())
}

/// Neural Cleanse's verdict, anomaly indices, per-class table and its most anomalous class's
/// mask and masked pattern.
fn baseline(
    h: &mut String,
    nc: &NcReport,
    cepa_target: Option<usize>,
    combined: bool,
) -> std::fmt::Result {
    let threshold = nc.threshold;
    writeln!(
        h,
        "<h2>Baseline: Neural Cleanse on {} of the images CEPA optimised</h2>",
        nc.images
    )?;
    let (class, text) = match nc.target {
        Some(t) => (
            "bad",
            format!(
                "BACKDOORED: target class {t} (index {:.2} &gt; {threshold:.2})",
                nc.score
            ),
        ),
        None => (
            "ok",
            format!(
                "clean: largest index {:.2} at class {} (threshold {threshold:.2})",
                nc.score, nc.most_anomalous
            ),
        ),
    };
    writeln!(h, "<p class=\"verdict {class}\">{text}</p>")?;
    if nc.target != cepa_target {
        let status = if combined {
            "the combined verdict at the top sets the exit status"
        } else {
            "CEPA's verdict is the report's (and the exit status)"
        };
        writeln!(h, "<p>The detectors disagree; {status}.</p>")?;
    }
    let bars: Vec<(usize, f64)> = nc
        .classes
        .iter()
        .map(|c| (c.target, c.anomaly_index))
        .collect();
    writeln!(h, "{}", bar_chart(&bars, threshold, nc.target))?;
    if let Some(sr) = &nc.screen {
        let kept = sr
            .classes
            .iter()
            .filter(|c| c.role != ScreenRole::ScreenedOut)
            .count();
        writeln!(
            h,
            "<p>Screened: a {}-step pass on {} images ranked all {} classes; the {} classes below \
             were optimised fully (the most anomalous, and a null sample weighted for the rest).</p>",
            sr.config.steps,
            sr.config.max_samples,
            sr.classes.len(),
            kept
        )?;
    }
    writeln!(
        h,
        "<div class=\"wide\"><table><tr><th>class</th><th>mask L1</th><th>ASR</th><th>feasible</th><th>steps</th><th>anomaly index</th></tr>"
    )?;
    for c in &nc.classes {
        let row = if Some(c.target) == nc.target {
            " class=\"target\""
        } else {
            ""
        };
        writeln!(
            h,
            "<tr{row}><td>{}</td><td>{:.1}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.target,
            c.l1,
            c.asr,
            if c.feasible { "yes" } else { "no" },
            c.steps,
            num(c.anomaly_index)
        )?;
    }
    writeln!(h, "</table></div>")?;
    let [ch, hh, ww] = nc.dims;
    if let Some(c) = nc.classes.iter().find(|c| c.target == nc.most_anomalous)
        && c.mask.len() == hh * ww
        && c.pattern.len() == ch * hh * ww
    {
        let masked: Vec<f32> = c
            .pattern
            .iter()
            .enumerate()
            .map(|(i, p)| p * c.mask[i % (hh * ww)])
            .collect();
        if let (Ok(m), Ok(mp)) = (
            to_png_bytes(&c.mask, 1, hh, ww),
            to_png_bytes(&masked, ch, hh, ww),
        ) {
            writeln!(
                h,
                "<div><figure>{}<figcaption>mask, class {}</figcaption></figure><figure>{}<figcaption>mask x pattern</figcaption></figure></div>",
                img(&m, "Neural Cleanse mask"),
                c.target,
                img(&mp, "Neural Cleanse mask times pattern")
            )?;
        }
    }
    Ok(())
}

/// Verdict line, per-class table and bar chart.
fn verdict(h: &mut String, s: &ScanReport, combined: bool) -> std::fmt::Result {
    let d = &s.decision;
    let threshold = d.threshold;
    let label = if combined { "CEPA alone: " } else { "" };
    match s.target {
        Some(t) => writeln!(
            h,
            "<p class=\"verdict bad\">{label}BACKDOORED: target class {t} (score {:.2} &gt; {threshold:.2}, p = {:.2e}), suspected sources {:?}</p>",
            s.score, s.p_value, s.sources
        )?,
        None => writeln!(
            h,
            "<p class=\"verdict ok\">{label}clean: largest score {:.2} at class {} (threshold {threshold:.2}, p = {:.2e})</p>",
            s.score, d.most_anomalous, s.p_value
        )?,
    }
    // The combined verdict's text carries its own caution.
    if let (false, Some(c)) = (combined, cepa::detect::verdict::sink_caution(d, s.target)) {
        writeln!(h, "<p class=\"caution\">caution: {}</p>", esc(&c))?;
    }
    writeln!(h, "<h2>Anomaly index per class</h2>")?;
    let bars: Vec<(usize, f64)> = d
        .classes
        .iter()
        .map(|c| (c.class, c.anomaly_index))
        .collect();
    writeln!(h, "{}", bar_chart(&bars, threshold, s.target))?;
    writeln!(
        h,
        "<div class=\"wide\"><table><tr><th>class</th><th>feasible</th><th>steps</th><th>rho</th>"
    )?;
    if let Some(first) = d.classes.first() {
        for st in &first.statistics {
            let at = match &st.layer {
                Some(l) => format!(" @ {l}"),
                None => String::new(),
            };
            write!(h, "<th>{}{}</th>", st.statistic.name(), esc(&at))?;
        }
    }
    writeln!(h, "<th>combined</th></tr>")?;
    for c in &d.classes {
        let class = if Some(c.class) == s.target {
            " class=\"target\""
        } else {
            ""
        };
        write!(
            h,
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td>",
            c.class,
            if c.feasible { "yes" } else { "no" },
            c.steps,
            c.rho
        )?;
        for st in &c.statistics {
            write!(
                h,
                "<td title=\"value {}\">{:.2}</td>",
                num(st.value),
                st.anomaly_index
            )?;
        }
        writeln!(h, "<td>{:.2}</td></tr>", c.anomaly_index)?;
    }
    writeln!(
        h,
        "</table></div><p>Cells: one-sided MAD anomaly index of each statistic (hover for its value); combined: the verdict's index.</p>"
    )?;
    for n in &d.notes {
        writeln!(h, "<p>note: {}</p>", esc(n))?;
    }
    if let Some(st) = &s.stimulation {
        writeln!(h, "<p>{}</p>", esc(&crate::scan::stimulation_line(st)))?;
    }
    if let Some(f) = position_figure(s) {
        writeln!(h, "{f}")?;
    }
    Ok(())
}

/// Where stimulation's deciding single value sits: a clean image of another class with the
/// value's cell of the map outlined (the cell's share of the input; the value's receptive field
/// is wider). `None` without a reading of single values or the scan's images.
fn position_figure(s: &ScanReport) -> Option<String> {
    let st = s.stimulation.as_ref()?;
    let p = st.positions.as_ref()?;
    let (y, x) = st.position_yx()?;
    let (mh, mw) = st.plane();
    let fit = s.fit_images.as_ref()?;
    let i = (0..fit.len()).find(|&i| fit.labels[i] != p.class)?;
    let [c, hi, wi] = fit.size();
    let png = to_png_bytes(fit.image(i), c, hi, wi).ok()?;
    let (r0, r1) = (y * hi / mh, ((y + 1) * hi).div_ceil(mh));
    let (c0, c1) = (x * wi / mw, ((x + 1) * wi).div_ceil(mw));
    let pct = |a: usize, n: usize| 100.0 * a as f64 / n as f64;
    let side = 128.0;
    Some(format!(
        "<figure style=\"max-width:360px\"><div style=\"position:relative;display:inline-block;width:{side}px;height:{:.0}px\">\
         <img class=\"px\" style=\"width:100%;height:100%\" src=\"data:image/png;base64,{}\" alt=\"a clean image of class {}\">\
         <div style=\"position:absolute;left:{:.2}%;top:{:.2}%;width:{:.2}%;height:{:.2}%;outline:2px solid #e00\"></div></div>\
         <figcaption>stimulation's deciding single value: channel {} at ({y}, {x}) of the {mh}x{mw} map, \
         over about rows {r0}-{} and columns {c0}-{} of the input (its receptive field is wider); \
         set alone to {:.1} times its clean maximum, it sends {:.0}% of the other classes' images to class {}</figcaption></figure>",
        side * hi as f64 / wi as f64,
        base64(&png),
        fit.labels[i],
        pct(c0, wi),
        pct(r0, hi),
        pct(c1 - c0, wi),
        pct(r1 - r0, hi),
        p.channel,
        r1 - 1,
        c1 - 1,
        p.level,
        100.0 * p.carried,
        p.class
    ))
}

/// The estimated trigger, its numbers, and clean vs triggered examples.
fn trigger(h: &mut String, t: &TriggerSection) -> std::fmt::Result {
    let inv = t.inversion;
    let b = &inv.best;
    writeln!(
        h,
        "<h2>Estimated trigger for class {} (stage 2)</h2>",
        inv.target
    )?;
    write!(
        h,
        "<div><figure>{}<figcaption>trigger",
        img(&t.trigger_png, "trigger")
    )?;
    if t.mask_png.is_none() {
        write!(h, " (mid-grey = 0)")?;
    } else {
        write!(h, " (mask &times; pattern)")?;
    }
    writeln!(h, "</figcaption></figure>")?;
    if let Some(m) = &t.mask_png {
        writeln!(
            h,
            "<figure>{}<figcaption>mask</figcaption></figure>",
            img(m, "mask")
        )?;
    }
    writeln!(h, "</div><dl>")?;
    let asr = match inv.asr {
        Some(a) => format!(
            "{a:.3} on {} held-out clean images of other classes",
            inv.holdout_images
        ),
        None => "no held-out images".to_string(),
    };
    let rows: Vec<(&str, String)> = vec![
        (
            "form",
            format!(
                "{}{}",
                b.kind.name(),
                if b.feasible {
                    ""
                } else {
                    " (did not reach the success threshold)"
                }
            ),
        ),
        ("why", inv.rule.clone()),
        ("attack success rate", asr),
        (
            "on the optimisation images",
            format!("{:.3}", b.fit_success),
        ),
        ("mean |x~ - x|", format!("{:.4}", b.cost)),
        (
            "strengthened",
            match b.confident_success {
                Some(c) => format!(
                    "x{:.2} (smallest trigger {:.4}); {:.3} of the optimisation images at probability >= {}",
                    b.strength, b.base_cost, c, inv.config.confidence
                ),
                None => "no".into(),
            },
        ),
        ("per image l1 / l2", format!("{:.2} / {:.3}", b.l1, b.l2)),
        (
            "lambda1 / lambda2",
            format!("{:.3e} / {:.3e}", b.lambda1, b.lambda2),
        ),
        (
            "consensus layer",
            inv.layer.clone().unwrap_or_else(|| "none".into()),
        ),
        ("steps, time", format!("{}, {:.1} s", b.steps, inv.seconds)),
    ];
    for (k, v) in rows {
        writeln!(h, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(&v))?;
    }
    if let Some(c) = &inv.truth {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        writeln!(
            h,
            "<dt>vs the true trigger</dt><dd>mask IoU {} (half max) / {} (top area), mass in patch {}, pattern cosine {}</dd>",
            f(c.mask_iou),
            f(c.mask_iou_top_area),
            f(c.mass_in_patch),
            f(c.pattern_cosine)
        )?;
    }
    writeln!(h, "</dl>")?;
    if !t.examples.is_empty() {
        writeln!(
            h,
            "<h2>Clean vs triggered</h2>\n<p>Held-out clean images and the same images with the estimated trigger; captions: true class, then the model's prediction.</p><div>"
        )?;
        for e in &t.examples {
            let flip = if e.triggered_pred == inv.target {
                " class=\"flip\""
            } else {
                ""
            };
            writeln!(
                h,
                "<figure>{}{}<figcaption>class {}: {} &rarr; <span{flip}>{}</span></figcaption></figure>",
                img(&e.clean_png, "clean"),
                img(&e.triggered_png, "triggered"),
                e.label,
                e.clean_pred,
                e.triggered_pred
            )?;
        }
        writeln!(h, "</div>")?;
    }
    Ok(())
}

/// An inline SVG bar chart of the anomaly indices with the threshold as a dashed line.
fn bar_chart(bars: &[(usize, f64)], threshold: f64, target: Option<usize>) -> String {
    let (bw, gap, plot_h, left, top, bottom) = (34.0, 10.0, 180.0, 44.0, 14.0, 26.0);
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let hi = bars
        .iter()
        .map(|b| finite(b.1))
        .fold(finite(threshold).max(0.0), f64::max)
        * 1.1
        + 1e-9;
    let lo = bars.iter().map(|b| finite(b.1)).fold(0.0, f64::min) * 1.1;
    let y = |v: f64| top + (hi - finite(v)) / (hi - lo) * plot_h;
    let width = left + bars.len() as f64 * (bw + gap) + gap;
    let height = top + plot_h + bottom;
    let mut s = format!(
        "<svg width=\"{width:.0}\" height=\"{height:.0}\" role=\"img\" aria-label=\"anomaly index per class\" font-size=\"11\">"
    );
    let _ = write!(
        s,
        "<line x1=\"{left}\" y1=\"{0:.1}\" x2=\"{width:.1}\" y2=\"{0:.1}\" stroke=\"#444\"/>",
        y(0.0)
    );
    for (k, (class, v)) in bars.iter().enumerate() {
        let x = left + gap + k as f64 * (bw + gap);
        let (y0, y1) = (y(0.0), y(*v));
        let colour = if Some(*class) == target {
            "#c0392b"
        } else {
            "#5b7fa6"
        };
        let _ = write!(
            s,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw}\" height=\"{:.1}\" fill=\"{colour}\"><title>class {class}: {}</title></rect>",
            y0.min(y1),
            (y1 - y0).abs(),
            num(*v)
        );
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{class}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"9\">{}</text>",
            x + bw / 2.0,
            top + plot_h + 16.0,
            x + bw / 2.0,
            y0.min(y1) - 2.0,
            if v.is_finite() {
                format!("{v:.1}")
            } else {
                "n/a".into()
            }
        );
    }
    let ty = y(threshold);
    let _ = write!(
        s,
        "<line x1=\"{left}\" y1=\"{ty:.1}\" x2=\"{width:.1}\" y2=\"{ty:.1}\" stroke=\"#c0392b\" stroke-dasharray=\"5,4\"/><text x=\"2\" y=\"{:.1}\" fill=\"#c0392b\">thr {threshold:.1}</text></svg>",
        ty + 4.0
    );
    s
}

fn img(png: &[u8], alt: &str) -> String {
    format!(
        "<img class=\"px\" alt=\"{alt}\" src=\"data:image/png;base64,{}\">",
        base64(png)
    )
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "n/a".into()
    }
}

/// Escape text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
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

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, coded) in cases {
            assert_eq!(base64(plain.as_bytes()), coded, "{plain}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn bar_chart_draws_one_bar_per_class_and_the_threshold() {
        let svg = bar_chart(&[(0, 1.0), (1, 4.0), (2, f64::NAN)], 2.0, Some(1));
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(
            svg.contains("stroke-dasharray") && svg.contains("thr 2.0"),
            "{svg}"
        );
        assert_eq!(
            svg.matches("#c0392b\"><title>").count(),
            1,
            "the target bar stands out"
        );
        assert!(svg.contains("n/a"));
    }
}
