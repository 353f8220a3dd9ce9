//! Every op family's tests, one body per device: each body below lives in its op's folder
//! (`src/ops/<op>/tests.rs`, beside the contract, the CPU twin, the launcher and the tape rule) and
//! runs here twice, as `<op>::<test>::cpu` and `<op>::<test>::cuda` (tests/common/harness.rs). The
//! CUDA legs are reported as ignored where no GPU is found; `REQUIRE_GPU=1` fails instead. Inputs
//! come from a fixed seed by default (`CODISTILL_TEST_SEED=N` or `random`; each test prints its
//! seed), outputs are poisoned before each op (`Tensor::poison_free_buffers`), and every result is
//! held against a float64 reference computed on the host.

#[allow(dead_code)]
mod common;

#[path = "../src/ops/dropout/tests.rs"]
mod dropout;
#[path = "../src/ops/elementwise/tests.rs"]
mod elementwise;
#[path = "../src/ops/embedding/tests.rs"]
mod embedding;
#[path = "../src/ops/loss/tests.rs"]
mod loss;
#[path = "../src/ops/lstm/tests.rs"]
mod lstm;
#[path = "../src/ops/matmul/tests.rs"]
mod matmul;
#[path = "../src/ops/optim/tests.rs"]
mod optim;
#[path = "../src/ops/reduce/tests.rs"]
mod reduce;
#[path = "../src/ops/softmax/tests.rs"]
mod softmax;
#[path = "../src/ops/softmax_kl/tests.rs"]
mod softmax_kl;

fn main() {
    common::harness::run_on_devices(
        "ops",
        &[
            ("dropout::the_mask_is_a_pure_function_of_seed_and_index", dropout::the_mask_is_a_pure_function_of_seed_and_index),
            ("elementwise::unary_ops_and_their_derivatives_match_f64", elementwise::unary_ops_and_their_derivatives_match_f64),
            ("elementwise::binary_ops_bias_and_axpy_match_f64", elementwise::binary_ops_bias_and_axpy_match_f64),
            ("embedding::gather_and_scatter_add_match_f64", embedding::gather_and_scatter_add_match_f64),
            ("loss::cross_entropies_match_f64", loss::cross_entropies_match_f64),
            ("loss::binary_divergences_match_their_definitions", loss::binary_divergences_match_their_definitions),
            (
                "lstm::forward_matches_f64_and_backward_matches_its_directional_derivative",
                lstm::forward_matches_f64_and_backward_matches_its_directional_derivative,
            ),
            ("matmul::every_orientation_matches_f64_on_every_backend", matmul::every_orientation_matches_f64_on_every_backend),
            ("matmul::accumulation_into_c_matches_f64", matmul::accumulation_into_c_matches_f64),
            ("optim::updates_match_f64_dense_and_row_sparse", optim::updates_match_f64_dense_and_row_sparse),
            ("reduce::sums_match_f64", reduce::sums_match_f64),
            ("softmax::rows_and_backward_match_f64", softmax::rows_and_backward_match_f64),
            (
                "softmax_kl::fused_matches_unfused_over_temperature_alpha_and_teacher_count",
                softmax_kl::fused_matches_unfused_over_temperature_alpha_and_teacher_count,
            ),
            ("softmax_kl::extreme_logits_neither_overflow_nor_nan", softmax_kl::extreme_logits_neither_overflow_nor_nan),
            (
                "softmax_kl::identical_student_and_teacher_give_zero_soft_loss_and_gradient",
                softmax_kl::identical_student_and_teacher_give_zero_soft_loss_and_gradient,
            ),
            ("softmax_kl::bad_arguments_are_errors_that_name_the_problem", softmax_kl::bad_arguments_are_errors_that_name_the_problem),
            ("softmax_kl::trainer_shapes_match_the_closed_form", softmax_kl::trainer_shapes_match_the_closed_form),
            ("softmax_kl::every_divergence_matches_its_definition", softmax_kl::every_divergence_matches_its_definition),
            ("softmax_kl::teacher_mix_matches_f64", softmax_kl::teacher_mix_matches_f64),
        ],
    )
}
