//! Graphs outside the supported set: each is refused with one typed error that lists every
//! unsupported node by name and op type. The small graphs are built here with the importer's own
//! protobuf structs; the Conv and two-input graphs are real PyTorch exports from the fixtures.

mod common;

use bnfold_import::onnx::proto::{AttributeProto, attribute_type};
use bnfold_import::{ImportError, import_onnx_bytes};
use common::{GraphBuilder, fixture};

/// Import `bytes` and return the `(name, op_type)` of every node the refusal lists.
fn refused(bytes: &[u8]) -> Vec<(String, String)> {
    let e = import_onnx_bytes(bytes, None, "test.onnx").expect_err("graph was accepted");
    let nodes = e
        .unsupported_nodes()
        .unwrap_or_else(|| panic!("not a refusal: {e}"));
    // One message, naming every node.
    let msg = e.to_string();
    for n in nodes {
        assert!(
            msg.contains(&format!("'{}' ({})", n.name, n.op_type)),
            "{msg}"
        );
    }
    nodes
        .iter()
        .map(|n| (n.name.clone(), n.op_type.clone()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn a_conv_export_lists_each_node_it_cannot_convert() {
    let bytes = std::fs::read(fixture("refuse_conv.onnx")).unwrap();
    assert_eq!(
        refused(&bytes),
        pairs(&[
            ("/Unsqueeze", "Unsqueeze"),
            ("/conv/Conv", "Conv"),
            ("/Flatten", "Flatten"),
        ])
    );
}

#[test]
fn a_second_input_is_refused() {
    let bytes = std::fs::read(fixture("refuse_two_inputs.onnx")).unwrap();
    assert_eq!(
        refused(&bytes),
        pairs(&[("b", "graph input"), ("/Add", "Add")])
    );
}

#[test]
fn a_branch_is_refused_naming_both_sides_and_the_join() {
    let mut g = GraphBuilder::new(3);
    g.gemm("fc", "x", "h", 3, 4);
    g.node("Relu", "left", &["h"], &["a"], vec![]);
    g.node("Tanh", "right", &["h"], &["b"], vec![]);
    g.node("Add", "join", &["a", "b"], &["y"], vec![]);
    assert_eq!(
        refused(&g.build("y")),
        pairs(&[("left", "Relu"), ("right", "Tanh"), ("join", "Add")])
    );
}

#[test]
fn a_reshape_that_is_not_a_no_op_is_refused_and_one_that_is_passes() {
    for (shape, ok) in [
        (vec![-1i64, 4], true),
        (vec![0, -1], true),
        (vec![-1, 2], false),
        (vec![4, -1], false),
        (vec![-1, 2, 2], false),
    ] {
        let mut g = GraphBuilder::new(3);
        g.gemm("fc", "x", "h", 3, 4);
        g.int_const("shape", &shape);
        g.node("Reshape", "reshape", &["h", "shape"], &["y"], vec![]);
        let bytes = g.build("y");
        if ok {
            let net = import_onnx_bytes(&bytes, None, "t").unwrap();
            assert_eq!(net.layers.len(), 1, "{shape:?}");
        } else {
            assert_eq!(
                refused(&bytes),
                pairs(&[("reshape", "Reshape")]),
                "{shape:?}"
            );
        }
    }
}

#[test]
fn unknown_ops_custom_domains_and_every_problem_at_once() {
    let mut g = GraphBuilder::new(3);
    g.gemm("fc", "x", "h", 3, 4);
    g.node("HardSwish", "hs", &["h"], &["a"], vec![]);
    g.node_in("com.microsoft", "FastGelu", "fg", &["a"], &["b"]);
    g.int_const("shape", &[-1, 2]);
    g.node("Reshape", "reshape", &["b", "shape"], &["c"], vec![]);
    g.node(
        "Softmax",
        "sm",
        &["c"],
        &["d"],
        vec![GraphBuilder::int("axis", 0)],
    );
    g.node("Relu", "relu", &["d"], &["y"], vec![]);
    let got = refused(&g.build("y"));
    assert_eq!(
        got,
        pairs(&[
            ("hs", "HardSwish"),
            ("fg", "com.microsoft:FastGelu"),
            ("reshape", "Reshape"),
            ("sm", "Softmax"),
        ])
    );
}

#[test]
fn softmax_must_be_last_and_on_the_last_axis() {
    let mut g = GraphBuilder::new(3);
    g.gemm("fc", "x", "h", 3, 4);
    g.node(
        "Softmax",
        "sm",
        &["h"],
        &["s"],
        vec![GraphBuilder::int("axis", -1)],
    );
    g.gemm("fc2", "s", "y", 4, 2);
    assert_eq!(refused(&g.build("y")), pairs(&[("sm", "Softmax")]));
}

#[test]
fn training_form_and_unsupported_layouts_are_refused() {
    // BatchNormalization in training mode.
    let mut g = GraphBuilder::new(3);
    g.batch_norm(
        "bn",
        "x",
        "h",
        3,
        vec![GraphBuilder::int("training_mode", 1)],
    );
    g.node("Relu", "relu", &["h"], &["y"], vec![]);
    assert_eq!(
        refused(&g.build("y")),
        pairs(&[("bn", "BatchNormalization")])
    );
    // Gemm with transA, and MatMul with the constant on the left.
    let mut g = GraphBuilder::new(3);
    g.float_const("W", &[3, 3], &[0.5; 9]);
    g.node(
        "Gemm",
        "ta",
        &["x", "W"],
        &["h"],
        vec![GraphBuilder::int("transA", 1)],
    );
    g.node("MatMul", "left", &["W", "h"], &["y"], vec![]);
    assert_eq!(
        refused(&g.build("y")),
        pairs(&[("ta", "Gemm"), ("left", "MatMul")])
    );
    // A per-feature constant that would broadcast over the batch ([2, F]).
    let mut g = GraphBuilder::new(3);
    g.float_const("c", &[2, 3], &[1.0; 6]);
    g.node("Mul", "mul", &["x", "c"], &["y"], vec![]);
    assert_eq!(refused(&g.build("y")), pairs(&[("mul", "Mul")]));
    // An op on constants the importer does not fold.
    let mut g = GraphBuilder::new(3);
    g.float_const("a", &[3], &[1.0; 3]);
    g.node("Sqrt", "sqrt", &["a"], &["s"], vec![]);
    g.node("Mul", "mul", &["x", "s"], &["y"], vec![]);
    let got = refused(&g.build("y"));
    assert_eq!(got[0], ("sqrt".to_owned(), "Sqrt".to_owned()));
}

#[test]
fn a_node_off_the_chain_is_listed() {
    let mut g = GraphBuilder::new(3);
    g.gemm("fc", "x", "y", 3, 2);
    // Reads the graph input but leads nowhere.
    g.node("Relu", "stray", &["x"], &["z"], vec![]);
    let got = refused(&g.build("y"));
    assert!(
        got.contains(&("stray".to_owned(), "Relu".to_owned())),
        "{got:?}"
    );
}

#[test]
fn structural_errors_are_typed() {
    // No input at all (the only "input" is an initializer).
    let mut g = GraphBuilder::new(3);
    g.gemm("fc", "x", "y", 3, 2);
    let mut m = g.model("y");
    m.graph.as_mut().unwrap().input.clear();
    let e = import_onnx_bytes(&common::encode(&m), None, "t").unwrap_err();
    assert!(matches!(e, ImportError::Graph(_)), "{e}");
    // No opset for the default domain.
    let mut m = GraphBuilder::new(3).model("x");
    m.opset_import.clear();
    let e = import_onnx_bytes(&common::encode(&m), None, "t").unwrap_err();
    assert!(
        matches!(e, ImportError::Graph(ref s) if s.contains("opset")),
        "{e}"
    );
    // No graph.
    let mut m = GraphBuilder::new(3).model("x");
    m.graph = None;
    let e = import_onnx_bytes(&common::encode(&m), None, "t").unwrap_err();
    assert!(matches!(e, ImportError::NoGraph), "{e}");
    // A value written twice.
    let mut g = GraphBuilder::new(3);
    g.node("Relu", "a", &["x"], &["h"], vec![]);
    g.node("Tanh", "b", &["x"], &["h"], vec![]);
    let e = import_onnx_bytes(&g.build("h"), None, "t").unwrap_err();
    assert!(
        matches!(e, ImportError::Graph(ref s) if s.contains("twice")),
        "{e}"
    );
    // The attribute of the wrong type.
    let mut g = GraphBuilder::new(3);
    let wrong = AttributeProto {
        name: "alpha".into(),
        r#type: attribute_type::STRING,
        s: b"0.2".to_vec(),
        ..Default::default()
    };
    g.node("LeakyRelu", "lr", &["x"], &["y"], vec![wrong]);
    assert_eq!(refused(&g.build("y")), pairs(&[("lr", "LeakyRelu")]));
}
