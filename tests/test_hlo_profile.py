"""hlo_profile.py on a hand-written optimised module: cycles summed by operation and by line of ours, a loop's body
counted as often as it runs, a fusion's inside not counted twice, frames walked out to the package's innermost."""

from conprediff_jax import hlo_profile

MODULE = """HloModule jit_step, is_scheduled=true

FileNames
1 "/somewhere/site-packages/flax/nnx/nn/linear.py"
2 "/repo/conprediff_jax/models/unet.py"
3 "/repo/conprediff_jax/train.py"

FunctionNames
1 "Conv.__call__"
2 "ResnetBlock2D.__call__"
3 "train_step"

FileLocations
1 {file_name_id=3 function_name_id=3 line=181 end_line=181 column=1 end_column=1}
2 {file_name_id=2 function_name_id=2 line=68 end_line=68 column=1 end_column=1}
3 {file_name_id=1 function_name_id=1 line=300 end_line=300 column=1 end_column=1}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}
3 {file_location_id=3 parent_frame_id=3}

%fused_computation.1 (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %n = f32[8]{0} negate(%p), metadata={op_name="jit(step)/neg"}, backend_config={"estimated_cycles":"999"}
}

%body.2 (t: (s32[], f32[8])) -> (s32[], f32[8]) {
  %t = (s32[], f32[8]) parameter(0)
  %conv = f32[8]{0} fusion(%t), kind=kOutput, calls=%fused_computation.1, metadata={op_name="jit(step)/transpose(jvp())/conv_general_dilated" stack_frame_id=3}, backend_config={"estimated_cycles":"100"}
  ROOT %r = (s32[], f32[8]) tuple(%t, %conv)
}

%cond.3 (t: (s32[], f32[8])) -> pred[] {
  %t = (s32[], f32[8]) parameter(0)
  ROOT %c = pred[] compare(%t, %t), direction=LT, backend_config={"estimated_cycles":"1"}
}

ENTRY %main.4 (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %w = (s32[], f32[8]) while(%a), condition=%cond.3, body=%body.2, backend_config={"known_trip_count":{"n":"4"}}
  %add = f32[8]{0} add(%a, %a), metadata={op_name="jit(step)/add" stack_frame_id=1}, backend_config={"estimated_cycles":"35"}
  ROOT %d = f32[8]{0} fusion(%a), kind=kOutput, calls=%fused_computation.1, metadata={op_name="jit(step)/jvp()/dot_general" stack_frame_id=2}, backend_config={"estimated_cycles":"60"}
}
"""


def test_cycles_by_operation_and_line_with_loops_run_as_often_as_they_run():
  profile = hlo_profile.profile(MODULE)
  total = 4 * 100 + 5 * 1 + 35 + 60  # the body 4 times, the condition 5, the fused negate never on its own
  assert profile["total_cycles"] == total
  assert dict(profile["by_op"]) == {"conv_general_dilated (backward)": round(400 / total, 4),
                                    "dot_general": round(60 / total, 4), "add": round(35 / total, 4),
                                    "(unnamed)": round(5 / total, 4)}
  assert dict(profile["by_line"]) == {  # flax's Conv frame is walked out to the UNet line that called it
      "conprediff_jax/models/unet.py:68 (ResnetBlock2D.__call__)": round(460 / total, 4),
      "conprediff_jax/train.py:181 (train_step)": round(35 / total, 4),
      "(outside conprediff_jax)": round(5 / total, 4)}
  assert profile["kernels_not_estimated"] == 0
  assert hlo_profile.profile(MODULE.replace("estimated_cycles", "other")) is None  # a GPU or CPU module


def test_an_estimate_the_compiler_gives_as_unknown_is_counted_apart():
  """A VQ codebook's scatter-add compiled for a v5p carried 2**63 - 1 cycles: summed, it was the whole step."""
  scatter = ('  %s = f32[8]{0} scatter(%a, %a, %a), metadata={op_name="jit(step)/scatter-add" stack_frame_id=1}, '
             'backend_config={"estimated_cycles":"9223372036854775807"}\n')
  profile = hlo_profile.profile(MODULE.replace("  ROOT %d = f32[8]", scatter + "  ROOT %d = f32[8]"))
  assert profile == {**hlo_profile.profile(MODULE), "unknown_estimates": 1}


COLLECTIVES = """HloModule jit_step, is_scheduled=true

%body.2 (t: (s32[], f32[8])) -> (s32[], f32[8]) {
  %t = (s32[], f32[8]) parameter(0)
  %g = f32[8]{0} get-tuple-element(%t), index=1
  %ar = f32[8]{0:T(128)S(3)} all-reduce(%g), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  ROOT %r = (s32[], f32[8]) tuple(%t, %ar)
}

%cond.3 (t: (s32[], f32[8])) -> pred[] {
  %t = (s32[], f32[8]) parameter(0)
  ROOT %c = pred[] compare(%t, %t), direction=LT
}

%all-reduce-scatter.7 (input: f32[8]) -> f32[2] {
  %input = f32[8]{0} parameter(0)
  %all-reduce.9 = f32[8]{0:T(128)} all-reduce(%input), channel_id=4, replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %slice = f32[2]{0} dynamic-slice(%all-reduce.9, %i), dynamic_slice_sizes={2}
}

ENTRY %main.4 (a: bf16[2,16], b: f32[8]) -> f32[8] {
  %a = bf16[2,16]{1,0} parameter(0)
  %b = f32[8]{0} parameter(1)
  %w = (s32[], f32[8]) while(%b), condition=%cond.3, body=%body.2, backend_config={"known_trip_count":{"n":"3"}}
  %ags = (bf16[2,16]{1,0}, bf16[4,16]{1,0}) all-gather-start(%a), channel_id=2, dimensions={0}
  %agd = bf16[4,16]{1,0:T(4,128)(2,1)} all-gather-done(%ags)
  %cps = (f32[8]{0}, f32[8]{0}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%b), source_target_pairs={{0,1}}
  %cpd = f32[8]{0} collective-permute-done(%cps)
  %rs = (f32[4]{0}, s32[2]{0}) reduce-scatter(%b, %b), channel_id=3, dimensions={0}, to_apply=%add
  %fusion = f32[2]{0:T(128)S(3)} fusion(%b), kind=kCustom, calls=%all-reduce-scatter.7
  ROOT %o = f32[8]{0} add(%cpd, %b)
}
"""


def test_collectives_count_what_each_delivers_as_often_as_it_runs():
  assert hlo_profile.collectives(COLLECTIVES) == {
      "all-reduce": 3 * 8 * 4,       # in the loop's body, run 3 times
      "all-gather": 4 * 16 * 2,      # counted at its -done, the gathered bf16 array
      "collective-permute": 8 * 4,   # what it receives, not its start's buffers
      "reduce-scatter": 4 * 4 + 2 * 4 + 8 * 4}  # a TPU's (the fusion): the whole array it reduces
  assert hlo_profile.collectives(MODULE) == {}


COPIES = """HloModule jit_step, is_scheduled=true

%body.2 (t: (s32[], f32[8])) -> (s32[], f32[8]) {
  %t = (s32[], f32[8]) parameter(0)
  %g = f32[8]{0} get-tuple-element(%t), index=1
  %copy-start.1 = (f32[8]{0:T(128)S(3)}, f32[8]{0:T(128)}, u32[]{:S(2)}) copy-start(%g)
  %copy-done.1 = f32[8]{0:T(128)S(3)} copy-done(%copy-start.1)
  ROOT %r = (s32[], f32[8]) tuple(%t, %copy-done.1)
}

%cond.3 (t: (s32[], f32[8])) -> pred[] {
  %t = (s32[], f32[8]) parameter(0)
  ROOT %c = pred[] compare(%t, %t), direction=LT
}

ENTRY %main.4 (a: bf16[16,64,512], b: f32[8]) -> f32[8] {
  %a = bf16[16,64,512]{2,1,0:T(8,128)(2,1)} parameter(0)
  %b = f32[8]{0} parameter(1)
  %w = (s32[], f32[8]) while(%b), condition=%cond.3, body=%body.2, backend_config={"known_trip_count":{"n":"3"}}
  %slice-start.4 = ((bf16[16,64,512]{2,1,0:T(8,128)(2,1)}), bf16[4,64,512]{2,1,0:T(8,128)(2,1)S(3)}, s32[]{:S(2)}) slice-start(%a), slice={[0:4], [0:64], [0:512]}
  %evict = (bf16[2,16]{1,0:T(8,128)(2,1)}, bf16[2,16]{1,0:T(8,128)(2,1)S(3)}, u32[]{:S(2)}) copy-start(%x)
  %plain = (f32[8]{0}, f32[8]{0}, u32[]{:S(2)}) copy-start(%b)
  %cps = (f32[8]{0}, f32[8]{0}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%b), source_target_pairs={{0,1}}
  ROOT %o = f32[8]{0} add(%b, %b)
}
"""


def test_memory_space_copies_count_what_each_moves_into_or_out_of_another_memory():
  assert hlo_profile.memory_space_copies(COPIES) == {
      "into S(3)": 3 * 8 * 4 + 4 * 64 * 512 * 2,  # the loop's prefetch 3 times; a slice: the slice, not its source
      "out of S(3)": 2 * 16 * 2}  # an eviction back to HBM; a copy within HBM and a collective are not counted
  assert hlo_profile.memory_space_copies(MODULE) == {}
