"""Lepton's own TIR schedules (issue #5): CPU rules applied with `tvm.s_tir.dlight.ApplyDefaultSchedule`."""

from lepton.codegen.schedules.cpu import Injective, TiledReduction, cpu_rules

__all__ = ["Injective", "TiledReduction", "cpu_rules"]
