"""Series eligibility rules, one failure each, from real-looking headers."""

from __future__ import annotations

import dataclasses

import pytest

from dicomnode.assembly import first_failure
from dicomnode.settings import ENHANCED_CT_IMAGE_STORAGE, AssemblySettings
from dicomnode.spool import read_header
from factories import PhantomSeries

SETTINGS = AssemblySettings()


def headers(**kwargs):  # type: ignore[no-untyped-def]
    return [read_header(ds) for ds in PhantomSeries(**kwargs).datasets()]


def test_a_good_series_passes() -> None:
    assert first_failure(headers(), SETTINGS) is None


def test_rules_name_the_problem() -> None:
    assert first_failure(headers(modality="MR"), SETTINGS).startswith("modality:")
    assert first_failure(headers(image_type=("DERIVED", "SECONDARY")), SETTINGS).startswith("original image:")
    assert first_failure(headers(slices=3), SETTINGS) == "minimum slices: 3 slices, at least 20 needed"
    missing = first_failure(headers(missing=(20,)), SETTINGS)
    assert missing.startswith("no missing slices:") and "10.00 mm between -105.00 and -95.00" in missing
    thick = first_failure(headers(slice_spacing_mm=12.0), SETTINGS)
    assert thick == "slice thickness: slices are 12 mm thick (limit 10 mm)"
    assert first_failure([], SETTINGS) == "the series has no instances left in the spool"


def test_not_axial() -> None:
    sagittal = [dataclasses.replace(h, orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0)) for h in headers()]
    assert first_failure(sagittal, SETTINGS).startswith("axial: not axial: the slices are tilted 90 degrees")


def test_inconsistent_geometry() -> None:
    mixed = headers()
    mixed[5] = dataclasses.replace(mixed[5], rows=128)
    assert first_failure(mixed, SETTINGS) == "consistent geometry: slices differ in size (96x96 and 128x96)"


def test_series_beyond_the_size_limits_are_not_analysed() -> None:
    small = dataclasses.replace(SETTINGS, max_slices=39, max_matrix=95)
    assert first_failure(headers(), small) == "size limits: 40 instances, at most 39 are analysed (assembly.max_slices)"
    wide = dataclasses.replace(small, max_slices=40)
    assert first_failure(headers(), wide) == (
        "size limits: images of 96 rows or columns, at most 95 are analysed (assembly.max_matrix)"
    )
    assert first_failure(headers(), dataclasses.replace(wide, max_matrix=96)) is None


def test_enhanced_ct_is_kept_but_not_analysed() -> None:
    enhanced = [dataclasses.replace(h, sop_class_uid=ENHANCED_CT_IMAGE_STORAGE) for h in headers()]
    assert first_failure(enhanced, SETTINGS).startswith("single-frame CT:")


def test_duplicate_positions_are_not_gaps() -> None:
    doubled = headers() + headers(series_uid="1.2.3.4")  # same positions twice
    assert first_failure(doubled, SETTINGS) is None


@pytest.mark.parametrize("require_original", [True, False])
def test_original_rule_is_configurable(require_original: bool) -> None:
    settings = dataclasses.replace(SETTINGS, require_original=require_original)
    result = first_failure(headers(image_type=("DERIVED", "PRIMARY")), settings)
    assert (result is not None) == require_original
