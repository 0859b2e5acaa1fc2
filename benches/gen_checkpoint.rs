//! Writes a llama-7B-shaped bf16 safetensors checkpoint of about the requested size, for the
//! speed and memory benchmarks (benches/bench.sh). Values are weight-like (heavy tails,
//! outlier channels) and deterministic.
//!
//!   cargo run --release --example gen_checkpoint -- OUT.safetensors SIZE_GB
//!
//! When OUT is a folder (no .safetensors suffix) it becomes a Hugging Face llama folder:
//! model.safetensors, config.json, and the fixture's tokenizer files.

use qs_formats::safetensors::{plan_layout, StEntry};
use qs_numeric::synth::weight_matrix;
use qs_numeric::DType;
use std::collections::BTreeMap;
use std::io::{BufWriter, Seek, SeekFrom, Write};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: gen_checkpoint OUT.safetensors SIZE_GB");
        std::process::exit(2);
    }
    let target: f64 = args[2].parse::<f64>().expect("SIZE_GB is a number") * 1e9;
    let (hidden, inter, vocab) = (4096usize, 11008usize, 32000usize);
    let mut entries = vec![StEntry {
        name: "model.embed_tokens.weight".into(),
        dtype: DType::BF16,
        shape: vec![vocab, hidden],
    }];
    let mut size = (vocab * hidden * 2 * 2) as f64; // embed + lm_head
    let layer = ((4 * hidden * hidden + 3 * hidden * inter) * 2) as f64;
    let mut l = 0;
    while size + layer <= target || l == 0 {
        let p = format!("model.layers.{l}.");
        entries.push(StEntry {
            name: format!("{p}input_layernorm.weight"),
            dtype: DType::BF16,
            shape: vec![hidden],
        });
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            entries.push(StEntry {
                name: format!("{p}self_attn.{n}.weight"),
                dtype: DType::BF16,
                shape: vec![hidden, hidden],
            });
        }
        entries.push(StEntry {
            name: format!("{p}post_attention_layernorm.weight"),
            dtype: DType::BF16,
            shape: vec![hidden],
        });
        entries.push(StEntry {
            name: format!("{p}mlp.gate_proj.weight"),
            dtype: DType::BF16,
            shape: vec![inter, hidden],
        });
        entries.push(StEntry {
            name: format!("{p}mlp.up_proj.weight"),
            dtype: DType::BF16,
            shape: vec![inter, hidden],
        });
        entries.push(StEntry {
            name: format!("{p}mlp.down_proj.weight"),
            dtype: DType::BF16,
            shape: vec![hidden, inter],
        });
        size += layer;
        l += 1;
    }
    entries.push(StEntry {
        name: "model.norm.weight".into(),
        dtype: DType::BF16,
        shape: vec![hidden],
    });
    entries.push(StEntry {
        name: "lm_head.weight".into(),
        dtype: DType::BF16,
        shape: vec![vocab, hidden],
    });

    let layout = plan_layout(
        &entries,
        &BTreeMap::from([("format".to_string(), "pt".to_string())]),
    );
    // A pool of weight-like bf16 values, reused at a different offset per tensor.
    let pool: Vec<u8> = weight_matrix(1 << 10, 1 << 12, 0.02, 1)
        .iter()
        .flat_map(|v| qs_numeric::dtype::f32_to_bf16_bits(*v).to_le_bytes())
        .collect();
    let out = std::path::PathBuf::from(&args[1]);
    let file = if out.extension().is_some_and(|e| e == "safetensors") {
        out.clone()
    } else {
        std::fs::create_dir_all(&out).expect("create folder");
        let cfg = format!(
            r#"{{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":{hidden},"intermediate_size":{inter},"num_hidden_layers":{l},"num_attention_heads":32,"num_key_value_heads":32,"vocab_size":{vocab},"max_position_embeddings":4096,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":false,"torch_dtype":"bfloat16","bos_token_id":1,"eos_token_id":2}}"#
        );
        std::fs::write(out.join("config.json"), cfg).expect("config.json");
        let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-llama");
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(fx.join(f), out.join(f)).expect("tokenizer files");
        }
        out.join("model.safetensors")
    };
    let f = std::fs::File::create(&file).expect("create output");
    let mut w = BufWriter::with_capacity(1 << 22, f);
    w.write_all(&layout.header).unwrap();
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| layout.offsets[i]);
    for (k, i) in order.into_iter().enumerate() {
        w.seek(SeekFrom::Start(layout.offsets[i])).unwrap();
        let mut left = entries[i].nbytes();
        let mut pos = (k * 7919 * 2) % pool.len();
        while left > 0 {
            let n = left.min(pool.len() - pos);
            w.write_all(&pool[pos..pos + n]).unwrap();
            left -= n;
            pos = (pos + n) % pool.len();
        }
    }
    w.flush().unwrap();
    println!(
        "{}: {} layers, {:.2} GB",
        args[1],
        l,
        layout.total_len as f64 / 1e9
    );
}
