// Package tape writes and reads stasis tape volumes: POSIX tar archives
// written in fixed-size records, so that a tape drive in fixed-block mode
// accepts every write and GNU tar can list and extract a volume with no
// stasis at all (`tar -b 512 -tf VOLUME` for the default 256 KiB blocks).
//
// # Volume layout
//
// Every volume of a set holds, in this order:
//
//  1. the label, LabelName (JSON, see Label);
//  2. copies of the catalogs of all earlier volumes of the set, each named
//     CatalogName(seq) (JSON, see Catalog);
//  3. the payload members, in the order given to WriteSet, under their own
//     names (repository-relative paths such as "packs/ab/<hex>");
//  4. this volume's catalog, CatalogName(label.Volume): every payload member
//     on the volume with its size and BLAKE3 checksum.
//
// The package knows nothing about repositories: payload members are opaque
// names with a size and an opener. docs/tape.md describes the format for
// someone who has only GNU tar and a JSON viewer.
//
// # Multi-volume sets and end of media
//
// A member is never split. A member that does not fit in what is left of
// WriteOptions.VolumeSize (keeping room for the catalog) goes whole onto the
// next volume. When the device reports end of media (a write failing with
// ENOSPC), the member being written is dropped from the volume and written
// whole on the next one. If the device still accepts writes, the volume is
// closed cleanly: the interrupted member is padded with zeros to its declared
// size (so the tar stream stays valid) and listed under Catalog.Dropped, then
// the catalog and the end-of-archive marker follow. Otherwise the volume ends
// where the device stopped, its catalog is marked Truncated and exists only
// as the copy carried by the next volume; a next volume is written for that
// purpose even when no payload is left.
//
// # Errors
//
// Errors wrap the sentinels declared below and name the volume and member;
// match them with errors.Is.
package tape

import "errors"

var (
	// ErrNotVolume means the data does not start with a stasis volume label.
	ErrNotVolume = errors.New("not a stasis tape volume")
	// ErrFormatVersion means the label or catalog has a format version this
	// build does not know; use a newer stasis.
	ErrFormatVersion = errors.New("unknown tape format version")
	// ErrCorrupt means a label or catalog could not be decoded or is
	// inconsistent.
	ErrCorrupt = errors.New("corrupt tape metadata")
	// ErrTruncated means a volume ends before its end-of-archive marker.
	ErrTruncated = errors.New("volume is truncated")
	// ErrChecksum means a member's size or BLAKE3 checksum differs from the
	// catalog.
	ErrChecksum = errors.New("member does not match catalog")
	// ErrVerify means VerifyVolume or ReadVolume found bad members; the
	// Report names every one.
	ErrVerify = errors.New("volume verification failed")
	// ErrMemberTooLarge means a member does not fit on a volume of its own.
	ErrMemberTooLarge = errors.New("member does not fit on one volume")
	// ErrInvalidName means a member name is not a clean relative path.
	ErrInvalidName = errors.New("invalid member name")
	// ErrChangeVolume means the change-volume command failed.
	ErrChangeVolume = errors.New("change-volume command failed")
)
