#!/usr/bin/env node
// Reads the node's results with dcmjs, the DICOM library under OHIF and Cornerstone, the way a
// viewer does, and reports what a viewer would show. Used by the Python tests, which compare
// the report with the masks and findings the objects were written from.
//
//   node read_dicom.js seg SEG.dcm MASKS.bin CT.dcm...
//       Writes MASKS.bin: one bit per pixel (numpy's packbits order, most significant bit
//       first), for every segment (in SegmentSequence order) and every CT file (in the given
//       order), as dcmjs's Cornerstone adapter places them (Segmentation.generateToolState:
//       frames matched to the CT images by their references and positions). Prints JSON with
//       the segments and, for each frame, the source image and segment it names (read with
//       dcmjs alone), so the test can check both.
//   node read_dicom.js sr SR.dcm
//       Prints JSON with the measurement groups of the TID 1500 report: tracking identifier,
//       finding, numeric measurements, referenced segment, and image regions (SCOORD).
"use strict";

const fs = require("fs");
const dcmjs = require("dcmjs");

const { DicomMessage, DicomMetaDictionary } = dcmjs.data;

function readDataset(path) {
  const bytes = fs.readFileSync(path);
  const arrayBuffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const dicomData = DicomMessage.readFile(arrayBuffer);
  const dataset = DicomMetaDictionary.naturalizeDataset(dicomData.dict);
  dataset._meta = DicomMetaDictionary.namifyDataset(dicomData.meta);
  return { dataset, arrayBuffer };
}

function asArray(value) {
  if (value === undefined) return [];
  return Array.isArray(value) ? value : [value];
}

// The Cornerstone metadata a viewer has for each CT image, keyed by an image id per file.
function metadataProvider(ctDatasets) {
  const byId = new Map(ctDatasets.map((ds, index) => [`ct:${index}`, ds]));
  return {
    get(type, imageId) {
      const ds = byId.get(imageId);
      if (!ds) return undefined;
      const orientation = asArray(ds.ImageOrientationPatient).map(Number);
      switch (type) {
        case "imagePlaneModule":
          return {
            rowCosines: orientation.slice(0, 3),
            columnCosines: orientation.slice(3, 6),
            imagePositionPatient: asArray(ds.ImagePositionPatient).map(Number),
            rows: ds.Rows,
            columns: ds.Columns,
            frameOfReferenceUID: ds.FrameOfReferenceUID,
          };
        case "generalSeriesModule":
          return { seriesInstanceUID: ds.SeriesInstanceUID, modality: ds.Modality };
        case "sopCommonModule":
          return { sopInstanceUID: ds.SOPInstanceUID, sopClassUID: ds.SOPClassUID };
        case "imagePixelModule":
          return { rows: ds.Rows, columns: ds.Columns };
        case "instance":
          return {
            ImagePositionPatient: asArray(ds.ImagePositionPatient).map(Number),
            FrameOfReferenceUID: ds.FrameOfReferenceUID,
            SeriesInstanceUID: ds.SeriesInstanceUID,
            SOPInstanceUID: ds.SOPInstanceUID,
          };
        case "frameNumber":
          return undefined;
        default:
          return undefined;
      }
    },
  };
}

// Per-frame facts, read with dcmjs alone: the source image and the segment each frame names.
function frames(seg) {
  return asArray(seg.PerFrameFunctionalGroupsSequence).map((group) => {
    const derivation = asArray(group.DerivationImageSequence)[0] || {};
    const source = asArray(derivation.SourceImageSequence)[0] || {};
    const identification = asArray(group.SegmentIdentificationSequence)[0];
    const position = asArray(group.PlanePositionSequence)[0] || {};
    return {
      source_sop_instance_uid: source.ReferencedSOPInstanceUID || null,
      segment_number: identification ? identification.ReferencedSegmentNumber : null,
      image_position_patient: asArray(position.ImagePositionPatient).map(Number),
    };
  });
}

function segments(seg) {
  return asArray(seg.SegmentSequence).map((item) => ({
    number: item.SegmentNumber,
    label: item.SegmentLabel,
    category: asArray(item.SegmentedPropertyCategoryCodeSequence)[0].CodeValue,
    type: asArray(item.SegmentedPropertyTypeCodeSequence)[0].CodeValue,
    cielab: asArray(item.RecommendedDisplayCIELabValue).map(Number),
    tracking_uid: item.TrackingUID || null,
  }));
}

// Voxels of every segment on every CT image, as Cornerstone's SEG adapter places them (BINARY),
// or from the label values of each frame placed by its reference (LABELMAP: the adapter of this
// dcmjs version predates label maps).
function placedMasks(seg, arrayBuffer, ctDatasets) {
  const imageIds = ctDatasets.map((_, index) => `ct:${index}`);
  const numbers = segments(seg).map((s) => s.number).filter((n) => n !== 0);
  const slice = seg.Rows * seg.Columns;
  const masks = new Map(numbers.map((n) => [n, new Uint8Array(slice * imageIds.length)]));
  if (seg.SegmentationType === "LABELMAP") {
    const uidIndex = new Map(ctDatasets.map((ds, index) => [ds.SOPInstanceUID, index]));
    const pixels = new Uint8Array(asArray(seg.PixelData)[0]);
    const bytes = seg.BitsAllocated / 8;
    frames(seg).forEach((frame, f) => {
      const image = uidIndex.get(frame.source_sop_instance_uid);
      if (image === undefined) throw new Error(`frame ${f + 1} references no given CT image`);
      for (let p = 0; p < slice; p++) {
        let value = pixels[(f * slice + p) * bytes];
        if (bytes === 2) value += pixels[(f * slice + p) * 2 + 1] << 8;
        if (value !== 0) masks.get(value)[image * slice + p] = 1;
      }
    });
    return { numbers, masks, labelmaps: 0 };
  }
  const state = dcmjs.adapters.Cornerstone.Segmentation.generateToolState(
    imageIds,
    arrayBuffer,
    metadataProvider(ctDatasets),
  );
  for (const buffer of state.labelmapBufferArray) {
    const labels = new Uint16Array(buffer);
    for (let i = 0; i < labels.length; i++) {
      if (labels[i] !== 0) masks.get(labels[i])[i] = 1;
    }
  }
  return { numbers, masks, labelmaps: state.labelmapBufferArray.length };
}

function packBits(bits) {
  const packed = new Uint8Array(Math.ceil(bits.length / 8));
  for (let i = 0; i < bits.length; i++) {
    if (bits[i]) packed[i >> 3] |= 0x80 >> (i & 7);
  }
  return packed;
}

function readSeg(segPath, outPath, ctPaths) {
  const { dataset: seg, arrayBuffer } = readDataset(segPath);
  const ctDatasets = ctPaths.map((path) => readDataset(path).dataset);
  const placed = placedMasks(seg, arrayBuffer, ctDatasets);
  const parts = placed.numbers.map((n) => packBits(placed.masks.get(n)));
  fs.writeFileSync(outPath, Buffer.concat(parts.map((p) => Buffer.from(p.buffer))));
  return {
    sop_class_uid: seg.SOPClassUID,
    segmentation_type: seg.SegmentationType,
    rows: seg.Rows,
    columns: seg.Columns,
    number_of_frames: Number(seg.NumberOfFrames),
    frame_of_reference_uid: seg.FrameOfReferenceUID,
    image_orientation_patient: asArray(
      (asArray(asArray(seg.SharedFunctionalGroupsSequence)[0].PlaneOrientationSequence)[0] || {})
        .ImageOrientationPatient,
    ).map(Number),
    segments: segments(seg),
    mask_segments: placed.numbers,
    adapter_labelmaps: placed.labelmaps,
    frames: frames(seg),
  };
}

function conceptName(item) {
  const code = asArray(item.ConceptNameCodeSequence)[0];
  return code ? { value: code.CodeValue, scheme: code.CodingSchemeDesignator, meaning: code.CodeMeaning } : null;
}

function groupOf(container) {
  const group = { tracking_identifier: null, tracking_uid: null, finding: null, measurements: [], segment: null, regions: [] };
  for (const item of asArray(container.ContentSequence)) {
    const name = conceptName(item) || {};
    if (item.ValueType === "TEXT" && name.value === "112039") group.tracking_identifier = item.TextValue;
    else if (item.ValueType === "UIDREF" && name.value === "112040") group.tracking_uid = item.UID;
    else if (item.ValueType === "CODE" && name.value === "121071") {
      group.finding = asArray(item.ConceptCodeSequence)[0].CodeValue;
    } else if (item.ValueType === "NUM") {
      const measured = asArray(item.MeasuredValueSequence)[0];
      group.measurements.push({
        name: name.meaning,
        code: name.value,
        value: Number(measured.NumericValue),
        unit: asArray(measured.MeasurementUnitsCodeSequence)[0].CodeValue,
      });
    } else if (item.ValueType === "IMAGE" && name.value === "121191") {
      const reference = asArray(item.ReferencedSOPSequence)[0];
      group.segment = {
        sop_instance_uid: reference.ReferencedSOPInstanceUID,
        segment_number: asArray(reference.ReferencedSegmentNumber)[0],
      };
    } else if (item.ValueType === "SCOORD" || item.ValueType === "SCOORD3D") {
      const image = asArray(item.ContentSequence).find((child) => child.ValueType === "IMAGE");
      const reference = image ? asArray(image.ReferencedSOPSequence)[0] : {};
      group.regions.push({
        value_type: item.ValueType,
        graphic_type: item.GraphicType,
        graphic_data: asArray(item.GraphicData).map(Number),
        image_sop_instance_uid: reference.ReferencedSOPInstanceUID || null,
      });
    }
  }
  return group;
}

function readSr(srPath) {
  const { dataset: sr } = readDataset(srPath);
  const groups = [];
  for (const item of asArray(sr.ContentSequence)) {
    const name = conceptName(item);
    if (!name || name.value !== "126010") continue; // Imaging Measurements
    for (const container of asArray(item.ContentSequence)) {
      if (container.ValueType === "CONTAINER") groups.push(groupOf(container));
    }
  }
  return { sop_class_uid: sr.SOPClassUID, title: conceptName(sr), groups };
}

function main(argv) {
  const [command, ...args] = argv;
  if (command === "seg" && args.length >= 3) return readSeg(args[0], args[1], args.slice(2));
  if (command === "sr" && args.length === 1) return readSr(args[0]);
  throw new Error("usage: read_dicom.js seg SEG.dcm MASKS.bin CT.dcm... | read_dicom.js sr SR.dcm");
}

process.stdout.write(JSON.stringify(main(process.argv.slice(2))) + "\n");
