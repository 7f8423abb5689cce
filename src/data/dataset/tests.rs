//! Tests of the dataset formats.

use super::*;
use std::io::Write;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

fn fraud_line(input: &str, label: bool) -> String {
    serde_json::json!({"instruction": "判断", "input": input, "label": label,
                           "fraud_speaker": if label { "骗子" } else { "" }, "reason": "因为"})
    .to_string()
}

#[test]
fn fraud_jsonl_with_every_bad_line_kind() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    bytes.extend(fraud_line("甲：你好\n乙: 转账", true).bytes()); // 1
    bytes.extend(b"\nnot json\n"); // 2
    bytes.extend(br#"{"instruction":"x","label":true}"#); // 3 missing input
    bytes.extend(b"\n");
    bytes.extend(br#"{"instruction":"x","input":"y","label":"yes"}"#); // 4 wrong type
    bytes.extend(b"\n");
    bytes.extend(b"{\"instruction\":\"x\",\"input\":\"\xff\xfe\",\"label\":true}\n"); // 5 bad utf8
    bytes.extend(b"\n"); // 6 blank: skipped silently
    bytes.extend(fraud_line("甲: 在吗", false).bytes()); // 7
    bytes.extend(b"\n[1,2]\n"); // 8 not an object
    bytes.extend(br#"{"instruction":"x","input":"y","la"#); // 9 torn last line
    let p = write(dir.path(), "d.jsonl", &bytes);
    let r = load(&p).unwrap();
    assert_eq!(r.format, Format::Fraud);
    assert_eq!(r.samples.len(), 2);
    let lines: Vec<usize> = r.bad_lines.iter().map(|b| b.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 5, 8, 9]);
    assert!(r.bad_lines[0].reason.starts_with("not JSON"));
    assert_eq!(r.bad_lines[1].reason, "missing field `input`");
    assert_eq!(
        r.bad_lines[2].reason,
        "field `label` must be a bool, got a string"
    );
    assert!(r.bad_lines[3].reason.contains("UTF-8"));
    assert!(r.bad_lines[4].reason.contains("object"));
    assert!(r.bad_lines[5].reason.starts_with("not JSON"));
    assert_eq!(r.bad_lines[0].file, p);
    assert_eq!(
        r.summary,
        format!("loaded 2 samples from {}, skipped 6 bad lines", p.display())
    );
    let s = &r.samples[0];
    assert_eq!(s.label, Some(true));
    assert_eq!(s.fraud_speaker.as_deref(), Some("骗子"));
    assert_eq!(s.id.len(), 16);
    assert!(s.id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(
        s.turns(),
        vec![("甲".into(), "你好".into()), ("乙".into(), "转账".into())]
    );
    assert_eq!(s.speakers(), vec!["甲", "乙"]);
    assert_eq!(s.prompt_text(), "判断甲：你好\n乙: 转账");
    assert_eq!(s.char_len(), "甲：你好\n乙: 转账".chars().count());
}

#[test]
fn ids_are_stable_and_duplicates_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let a = fraud_line("甲: 1", true);
    let b = fraud_line("甲: 2", false);
    let p = write(dir.path(), "a.jsonl", format!("{a}\n{b}\n{a}\n").as_bytes());
    let r = load(&p).unwrap();
    assert_eq!(r.samples.len(), 2);
    assert_eq!(r.duplicates, 1);
    assert!(r.summary.ends_with("dropped 1 duplicate"), "{}", r.summary);
    let r2 = load_with(
        &p,
        &LoadOptions {
            keep_duplicates: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r2.samples.len(), 3);
    assert_eq!(r2.samples[0].id, r2.samples[2].id);
    // re-ordered file: same ids
    let p2 = write(dir.path(), "b.jsonl", format!("{b}\n{a}\n").as_bytes());
    let r3 = load(&p2).unwrap();
    assert_eq!(r3.samples[0].id, r.samples[1].id);
    assert_eq!(r3.samples[1].id, r.samples[0].id);
    // id = sha256(instruction \n input): a label does not change it
    assert_eq!(r.samples[0].id, hash::content_id("判断\n甲: 1".as_bytes()));
    let relabelled = Sample::fraud("判断", "甲: 1", Some(false), None, None);
    assert_eq!(relabelled.id, r.samples[0].id);
    let unlabelled = Sample::fraud("判断", "甲: 1", None, None, None);
    assert_eq!(unlabelled.id, r.samples[0].id);
}

#[test]
fn alpaca_array_and_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let arr = r#"[
          {"instruction": "判断", "input": "甲: 你好", "output": "{\"is_fraud\": true, \"fraud_speaker\": \"甲\", \"reason\": \"r\"}"},
          {"instruction": "写诗", "output": "床前明月光"},
          {"instruction": "x", "input": 3, "output": "y"},
          {"input": "no instruction", "output": "y"}
        ]"#;
    let p = write(dir.path(), "a.json", arr.as_bytes());
    let r = load(&p).unwrap();
    assert_eq!(r.format, Format::Alpaca);
    assert_eq!(r.samples.len(), 2);
    assert_eq!(r.samples[0].label, Some(true));
    assert_eq!(r.samples[0].fraud_speaker.as_deref(), Some("甲"));
    assert_eq!(r.samples[0].reason.as_deref(), Some("r"));
    assert_eq!(r.samples[1].label, None);
    assert_eq!(r.bad_lines.len(), 2);
    assert_eq!(r.bad_lines[0].line, 3);
    assert!(r.bad_lines[0].reason.contains("`input`"));
    assert!(r.bad_lines[1]
        .reason
        .contains("missing field `instruction`"));
    // fraud sample and its Alpaca form share the id
    let f = Sample::fraud("判断", "甲: 你好", Some(true), None, None);
    assert_eq!(f.id, r.samples[0].id);

    // .json holding JSONL
    let line = r#"{"instruction":"i","input":"","output":"{\"is_fraud\": false}"}"#;
    let p = write(dir.path(), "b.json", format!("{line}\n").as_bytes());
    let r = load(&p).unwrap();
    assert_eq!(r.format, Format::Alpaca);
    assert_eq!(r.samples[0].label, Some(false));
    // a broken array file is an error naming the file
    let p = write(dir.path(), "c.json", b"[{\"instruction\": ");
    assert!(format!("{:#}", load(&p).unwrap_err()).contains("c.json"));
}

#[test]
fn chat_and_sharegpt() {
    let dir = tempfile::tempdir().unwrap();
    let chat = r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"甲: 转钱"},{"role":"assistant","content":"{\"is_fraud\": true}"}]}
{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}
{"messages":[{"role":"wizard","content":"x"}]}
{"messages":"nope"}
{"messages":[{"role":"user"}]}
"#;
    let p = write(dir.path(), "c.jsonl", chat.as_bytes());
    let r = load(&p).unwrap();
    assert_eq!(r.format, Format::Chat);
    assert_eq!(r.samples.len(), 2);
    assert_eq!(r.samples[0].label, Some(true));
    assert_eq!(r.samples[1].label, None);
    assert_eq!(r.bad_lines.len(), 3);
    assert!(r.bad_lines[0].reason.contains("unknown role"));
    assert!(r.bad_lines[1].reason.contains("must be an array"));
    assert!(r.bad_lines[2].reason.contains("missing field `content`"));
    let m = r.samples[0].to_chat_messages("ignored", false, false);
    assert_eq!(m.len(), 2);
    assert_eq!(r.samples[0].turns(), vec![("甲".into(), "转钱".into())]);

    let sg = r#"{"conversations":[{"from":"system","value":"s"},{"from":"human","value":"甲: 转钱"},{"from":"gpt","value":"{\"is_fraud\": true}"}]}
{"conversations":[{"from":"robot","value":"x"}]}
"#;
    let p = write(dir.path(), "s.jsonl", sg.as_bytes());
    let r2 = load(&p).unwrap();
    assert_eq!(r2.format, Format::ShareGpt);
    assert_eq!(r2.samples.len(), 1);
    assert_eq!(r2.bad_lines.len(), 1);
    // ShareGPT and chat forms of the same conversation share the id
    assert_eq!(r2.samples[0].id, r.samples[0].id);
    assert_eq!(
        r2.samples[0].to_chat_messages("", true, false)[2].role,
        "assistant"
    );
}

#[test]
fn text_jsonl_and_txt() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "t.jsonl",
        b"{\"text\":\"one\"}\n{\"text\":5}\n{\"text\":\"two\"}\n",
    );
    let r = load(&p).unwrap();
    assert_eq!(r.format, Format::Text);
    assert_eq!(r.samples.len(), 2);
    assert_eq!(r.bad_lines[0].line, 2);
    let p = write(dir.path(), "t.txt", "甲: 你好\n\n乙: 再见\n".as_bytes());
    let r = load(&p).unwrap();
    assert_eq!(r.samples.len(), 1);
    assert_eq!(r.samples[0].turns().len(), 2);
    let p = write(dir.path(), "bad.txt", b"ok\n\xff");
    let r = load(&p).unwrap();
    assert_eq!(r.samples.len(), 0);
    assert_eq!(r.bad_lines[0].line, 2);
    let p = write(dir.path(), "empty.txt", b"  \n");
    assert_eq!(load(&p).unwrap().samples.len(), 0);
}

#[test]
fn csv_quoting_grouping_and_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let csv = "\u{feff}case,speaker,content,is_fraud\r\n\
            c1,张三,\"你好，我是客服\",False\r\n\
            c2,李四,\"他说\"\"转账\"\"\",true\r\n\
            c1,王五,\"第一行\n第二行\",True\r\n\
            c1,张三,好的,0\r\n\
            c3,赵六,x,maybe\r\n\
            c2,李四,嗯,1\r\n\
            c4,x\r\n\
            c5,周七,\"BADBYTE\",0\r\n\
            c2,钱八,还有,false\r\n\
            c9,a,\"never closed,1\n";
    let csv = csv.replace("BADBYTE", "\u{1}").into_bytes();
    let csv: Vec<u8> = csv
        .into_iter()
        .map(|b| if b == 1 { 0xff } else { b })
        .collect();
    let p = write(dir.path(), "d.csv", &csv);
    let (dialogues, bad) = read_csv_dialogues(&p).unwrap();
    assert_eq!(dialogues.len(), 2);
    assert_eq!(dialogues[0].case, "c1");
    assert_eq!(dialogues[0].turns.len(), 3);
    assert_eq!(dialogues[0].turns[0].content, "你好，我是客服");
    assert_eq!(dialogues[0].turns[1].content, "第一行\n第二行");
    assert!(dialogues[0].turns[1].is_fraud);
    assert_eq!(dialogues[1].turns[0].content, "他说\"转账\"");
    assert_eq!(dialogues[1].turns.len(), 3);
    let bad_lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
    assert_eq!(bad_lines, vec![7, 9, 10, 12]);
    assert!(bad[0].reason.contains("is_fraud"));
    assert!(bad[1].reason.contains("expected 4 fields"));
    assert!(bad[2].reason.contains("UTF-8"));
    assert!(bad[3].reason.contains("unterminated"));

    let r = load(&p).unwrap();
    assert_eq!(r.format, Format::Csv);
    assert_eq!(r.samples.len(), 2);
    assert_eq!(r.dialogues.len(), 2);
    let s = &r.samples[0];
    assert_eq!(s.label, Some(true));
    assert_eq!(s.fraud_speaker.as_deref(), Some("王五"));
    match &s.body {
        SampleBody::Fraud { instruction, input } => {
            assert_eq!(instruction, DEFAULT_INSTRUCTION);
            assert_eq!(
                input,
                "张三: 你好，我是客服\n王五: 第一行\n第二行\n张三: 好的"
            );
        }
        _ => panic!(),
    }
    assert_eq!(r.samples[1].fraud_speaker.as_deref(), Some("李四"));
    assert!(r.summary.contains("(6 turns)") && r.summary.contains("4 bad lines"));

    let p = write(dir.path(), "h.csv", b"case,who,content,is_fraud\nc,a,b,0\n");
    assert!(format!("{:#}", load(&p).unwrap_err()).contains("`speaker`"));
}

#[test]
fn detection_and_override() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "x.data",
        b"garbage\n{\"foo\":1}\n{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}\n",
    );
    assert_eq!(Format::detect(&p).unwrap(), Format::Chat);
    let r = load(&p).unwrap();
    assert_eq!(r.samples.len(), 1);
    assert_eq!(r.bad_lines.len(), 2);
    assert_eq!(r.bad_lines[1].line, 2);
    // explicit override: text-format reading of the same file
    let r = load_as(&p, Format::Text).unwrap();
    assert_eq!(r.format, Format::Text);
    assert_eq!(r.samples.len(), 0);
    assert_eq!(r.bad_lines.len(), 3);
    assert_eq!("ShareGPT".parse::<Format>().unwrap(), Format::ShareGpt);
    assert!("yaml".parse::<Format>().is_err());
    let err = load(&dir.path().join("missing.jsonl")).unwrap_err();
    assert!(format!("{err:#}").contains("missing.jsonl"));
}

#[test]
fn turns_and_chat_messages() {
    let t = parse_turns("前言\n甲：你好: 朋友\n  继续说\n\n乙:好\n这是一个非常非常非常非常非常非常非常非常非常长的前缀: 不是说话人");
    assert_eq!(
        t,
        vec![
            ("".into(), "前言".into()),
            ("甲".into(), "你好: 朋友\n继续说".into()),
            (
                "乙".into(),
                "好\n这是一个非常非常非常非常非常非常非常非常非常长的前缀: 不是说话人".into()
            ),
        ]
    );
    let s = Sample::fraud(
        "指令",
        "甲: 你好",
        Some(true),
        Some("甲".into()),
        Some("他\"骗\"人\n".into()),
    );
    let m = s.to_chat_messages(DEFAULT_SYSTEM, true, false);
    assert_eq!(m[0], Message::new("system", "You are a helpful assistant."));
    assert_eq!(m[1], Message::new("user", "指令甲: 你好"));
    assert_eq!(m[2], Message::new("assistant", "{\"is_fraud\": true}"));
    let m = s.to_chat_messages(DEFAULT_SYSTEM, true, true);
    assert_eq!(
        m[2].content,
        "{\"is_fraud\": true, \"fraud_speaker\": \"甲\", \"reason\": \"他\\\"骗\\\"人\\n\"}"
    );
    assert_eq!(s.to_chat_messages("", false, false).len(), 1);
    assert_eq!(
        answer_json(false, None, None, true),
        "{\"is_fraud\": false, \"fraud_speaker\": null, \"reason\": null}"
    );
    assert_eq!(s.first_turn(), Some(("甲".into(), "你好".into())));
    assert_eq!(
        parse_answer("```json\n{\"is_fraud\": false}\n```").map(|a| a.is_fraud),
        Some(false)
    );
    assert_eq!(parse_answer("{\"is_fraud\": 1}"), None);
    // text around the object, and objects cut off by the token limit
    let a =
        parse_answer("答案如下：{\"is_fraud\": true, \"fraud_speaker\": \"张三\"} 以上").unwrap();
    assert!(a.is_fraud);
    assert_eq!(a.fraud_speaker.as_deref(), Some("张三"));
    let a = parse_answer(
        "{\"is_fraud\": true, \"fraud_speaker\": \"李\\\"四\", \"reason\": \"冒充客服索要验证",
    )
    .unwrap();
    assert!(a.is_fraud);
    assert_eq!(a.fraud_speaker.as_deref(), Some("李\"四"));
    assert_eq!(a.reason.as_deref(), Some("冒充客服索要验证"));
    assert_eq!(parse_answer("{\"is_fraud\": fa"), None);
    assert_eq!(parse_answer("{\"is_fraud\""), None);
    assert_eq!(parse_answer("no json here"), None);
}

#[test]
fn dataset_ids() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "my data.v1.jsonl", b"");
    let id = dataset_id(&p);
    let (stem, h) = id.rsplit_once('-').unwrap();
    assert_eq!(stem, "my_data_v1");
    assert_eq!(h.len(), 8);
    assert_eq!(dataset_id(&p), id);
    let q = dir.path().join("other").join("my data.v1.jsonl");
    assert_ne!(dataset_id(&q), id);
}

#[test]
fn anonymised_speakers_and_label_leaks() {
    let s = Sample::fraud(
        "判断",
        "诈骗者: 你好，我是客服\n李婷: 诈骗者你好？我叫李婷\n诈骗者: 李婷，请转账",
        Some(true),
        Some("诈骗者".into()),
        None,
    );
    assert_eq!(s.label_leaks(), vec!["诈骗者".to_string()]);
    let a = s.anonymized();
    assert_eq!(a.id, s.id, "ids do not change");
    assert_eq!(a.label, Some(true));
    assert_eq!(a.fraud_speaker.as_deref(), Some("A"));
    assert_eq!(
        a.dialogue_text(),
        "A: 你好，我是客服\nB: A你好？我叫B\nA: B，请转账"
    );
    assert!(a.label_leaks().is_empty());
    // not a leak: ordinary names
    assert!(!is_label_leak("张建辉") && is_label_leak("Fraudster") && is_label_leak("骗子小王"));
    // consistent per dialogue, first appearance order
    let t = anonymize_turns(&[
        ("乙".into(), "x".into()),
        ("甲".into(), "y".into()),
        ("乙".into(), "z".into()),
    ]);
    assert_eq!(
        t.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
        ["A", "B", "A"]
    );
}
