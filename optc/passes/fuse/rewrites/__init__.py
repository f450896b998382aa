"""The generic rewrites, one module each. Import order is run order (see ``optc.passes.fuse.driver``)."""

from optc.passes.fuse.rewrites import (  # noqa: I001, F401  (each registers on import; order matters)
    constant_weight_inputs,
    fold_constants,
    subgraph_constants,
    subgraph_bodies,
    fold_shape_dims,
    merge_constants,
    merge_duplicates,
    constant_reshape_targets,
    drop_identity,
    drop_noops,
    drop_empty_concat_inputs,
    merge_transposes,
    merge_reshapes,
    merge_slices,
    fold_batchnorm,
    fold_scale_bias,
    matmul_add_to_gemm,
    drop_unused,
)
