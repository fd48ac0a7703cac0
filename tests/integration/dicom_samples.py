"""DICOM sample files for the integration tests, generated with pydicom.

make_instance() writes one valid Part-10 file with real pixel data;
make_tree() writes STUDY/SERIES/INSTANCE.dcm trees and returns the UIDs.
Run with Debian's /usr/bin/python3 (it has pydicom).
"""
import os

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         SecondaryCaptureImageStorage, generate_uid)

IMPLICIT_LE = ImplicitVRLittleEndian
EXPLICIT_LE = ExplicitVRLittleEndian
EXPLICIT_BE = ExplicitVRBigEndian


def pixel_array(rows, cols, bits, photometric, seed=0):
    """Deterministic, non-constant pixels (a gradient plus the seed)."""
    y, x = np.mgrid[0:rows, 0:cols]
    if photometric == "RGB":
        a = np.stack([(x * 255 // max(cols - 1, 1)), (y * 255 // max(rows - 1, 1)),
                      ((x + y + seed) % 256)], axis=-1)
        return a.astype(np.uint8)
    if bits == 8:
        return ((x + 2 * y + seed) % 256).astype(np.uint8)
    return ((x * 37 + y * 101 + seed) % 4096).astype(np.uint16)


def make_instance(path, study, series, sop, transfer_syntax=EXPLICIT_LE, rows=16, cols=16,
                  bits=8, photometric="MONOCHROME2", patient_name="DOE^JANE",
                  patient_id="PID-1", modality="OT", study_date="20240102", accession="ACC1",
                  instance_number=1, planar=0, frames=1, seed=0):
    """Writes a Secondary Capture instance with real pixel data; returns the dataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = generate_uid()
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.StudyDate = study_date
    ds.StudyTime = "101010"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.ReferringPhysicianName = "WHO^DR"
    ds.StudyID = "S1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Rows = rows
    ds.Columns = cols
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    ds.BitsAllocated = bits
    ds.BitsStored = bits if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if photometric == "RGB":
        ds.PlanarConfiguration = planar
    if frames > 1:
        ds.NumberOfFrames = frames
    arr = pixel_array(rows, cols, bits, photometric, seed)
    if photometric == "RGB" and planar == 1:
        arr = np.ascontiguousarray(np.moveaxis(arr, -1, 0))
    if frames > 1:
        arr = np.stack([arr] * frames)
    big = transfer_syntax == EXPLICIT_BE
    if bits == 16:
        arr = arr.astype(">u2" if big else "<u2")
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OW" if bits == 16 else "OB"
    save_dataset(ds, path)
    return ds


def save_dataset(ds, path):
    """Writes ds as Part 10 in the encoding its TransferSyntaxUID names."""
    ts = ds.file_meta.TransferSyntaxUID
    implicit = ts == IMPLICIT_LE
    little = ts != EXPLICIT_BE
    try:
        ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=little)
    except TypeError:  # pydicom < 3
        ds.is_implicit_VR = implicit
        ds.is_little_endian = little
        ds.save_as(path, write_like_original=False)


def make_tree(directory, n_studies=1, n_series=1, n_instances=1, **kw):
    """Writes STUDY/SERIES/SOP.dcm files; returns [(study, series, sop, path)]."""
    out = []
    for _ in range(n_studies):
        study = generate_uid()
        for _ in range(n_series):
            series = generate_uid()
            d = os.path.join(directory, study, series)
            os.makedirs(d, exist_ok=True)
            for k in range(n_instances):
                sop = generate_uid()
                path = os.path.join(d, sop + ".dcm")
                make_instance(path, study, series, sop, instance_number=k + 1, **kw)
                out.append((study, series, sop, path))
    return out


def make_encapsulated(path, study, series, sop, fragments, transfer_syntax="1.2.840.10008.1.2.4.50",
                      rows=8, cols=8):
    """Writes an instance whose PixelData is encapsulated (one fragment per frame).

    The fragment bytes are opaque to the emulator (it never decodes them).
    """
    from pydicom.encaps import encapsulate
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = generate_uid()
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName = "ENCAPS^ULATED"
    ds.Modality = "OT"
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = len(fragments)
    ds.PixelData = encapsulate(list(fragments))
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    try:
        ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    except TypeError:  # pydicom < 3
        ds.is_implicit_VR = False
        ds.is_little_endian = True
        ds.save_as(path, write_like_original=False)
    return ds


def large_instance_header(study, series, sop, side, patient=("BIG^DATA", "BIG")):
    """The bytes of a Part-10 file up to the Pixel Data element header (OW,
    explicit VR little endian) of a side x side 16-bit (12 stored) image: the
    caller appends side * side * 2 bytes of pixel values, in pieces, so that
    a 1 GiB file never sits in memory. pydicom writes every header byte."""
    import io
    import struct
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("large.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    # FileDataset defaults to implicit VR: say explicit, as the meta does.
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName, ds.PatientID = patient
    ds.Modality = "OT"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    buf = io.BytesIO()
    ds.save_as(buf, write_like_original=False)
    return buf.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, side * side * 2)
