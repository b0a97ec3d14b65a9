package repo

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/restic/chunker"
	"github.com/stasisbackup/stasis/repo/crypto"
)

// FormatVersion is the repository format Init writes. Open also reads and
// writes version 1 repositories, whose packs hold one blob per frame.
const FormatVersion = 2

// DefaultCompressionLevel is the zstd level of a new repository: zstd's
// fastest encoder (levels 1 and 2 are the same one here).
const DefaultCompressionLevel = 2

// DefaultFrameSize is the frame size of a new repository: small chunks of
// one file (and the small files of a backup) are compressed and sealed
// together, up to this many plaintext bytes per frame.
const DefaultFrameSize = 512 << 10

// ChunkProfile sets content-defined chunk boundaries. AvgBits gives an
// average chunk size of 2^AvgBits bytes.
type ChunkProfile struct {
	Min     uint `json:"min"`
	Max     uint `json:"max"`
	AvgBits int  `json:"avg_bits"`
}

// Default chunk profiles: "default" ≈1 MiB for ordinary files, "db" ≈16 KiB
// for page-structured database files updated in place.
var (
	ProfileDefault = ChunkProfile{Min: 512 << 10, Max: 8 << 20, AvgBits: 20}
	ProfileDB      = ChunkProfile{Min: 4 << 10, Max: 64 << 10, AvgBits: 14}
)

// ProfileName names a chunk profile: a key of Config.Profiles, stored in
// the config file as is.
type ProfileName string

// The chunk profiles every repository has.
const (
	// ProfileNameDefault chunks ordinary files (ProfileDefault at init).
	ProfileNameDefault ProfileName = "default"
	// ProfileNameDB chunks files whose base name matches a glob of
	// Config.DBGlobs (ProfileDB at init).
	ProfileNameDB ProfileName = "db"
)

// profileNames are the profiles a config must have.
var profileNames = []ProfileName{ProfileNameDefault, ProfileNameDB}

// Compression names how a repository compresses blobs (Config.Compression),
// stored in the config file as is.
type Compression string

// The compressions a config may name.
const (
	// CompressionZstd compresses blobs with zstd (at Config.CompressionLevel).
	CompressionZstd Compression = "zstd"
	// CompressionNone stores blobs uncompressed.
	CompressionNone Compression = "none"
)

// Config is the repository's `config` file (JSON). It is written once, by init.
//
// In an encrypted repository (Encrypted true) the file holds no secret: the
// chunker polynomial is sealed in Secrets with the master key, and the id key
// is part of the master key, which only key files (keys/<id>) hold. Open
// fills ChunkerPolynomial in the Config it returns once the password opened a
// key file; IDKey stays empty there.
type Config struct {
	Format            string                       `json:"format"` // always "stasis-config"
	Version           int                          `json:"version"`
	ID                string                       `json:"id"` // 32 hex digits
	Created           time.Time                    `json:"created"`
	Encrypted         bool                         `json:"encrypted"`
	Secrets           []byte                       `json:"secrets,omitempty"`            // encrypted only: sealed configSecrets (base64)
	ChunkerPolynomial string                       `json:"chunker_polynomial,omitempty"` // hex; plain repositories only in the file
	IDKey             string                       `json:"id_key,omitempty"`             // 64 hex digits: the BLAKE3 key for blob ids; plain repositories only
	Profiles          map[ProfileName]ChunkProfile `json:"profiles"`
	DBGlobs           []string                     `json:"db_globs"` // files chunked with profile ProfileNameDB
	Compression       Compression                  `json:"compression"`
	CompressionLevel  int                          `json:"compression_level"` // zstd level, 1..22 (EncoderLevelFromZstd: 1-2 fastest, 3-5 default, 6-9 better, 10+ best)
	PackSize          int64                        `json:"pack_size"`         // target pack size in bytes
	// FrameSize is the largest plaintext of a frame of several blobs
	// (version 2); 0 in version 1, whose frames hold one blob each.
	FrameSize int64 `json:"frame_size,omitempty"`
}

const configFormat = "stasis-config"

// Bounds of Config.FrameSize.
const (
	MinFrameSize = 4 << 10
	MaxFrameSize = 4 << 20
)

// framed reports whether the repository stores several blobs per frame.
func (c Config) framed() bool { return c.Version >= 2 && c.FrameSize > 0 }

// InitOptions tune a new repository. Zero values pick the defaults; tests set
// Polynomial and IDKey to be deterministic.
//
// A repository is encrypted unless InsecureNoPassword is set: Init then needs
// a non-empty Password, and fails when neither is given.
type InitOptions struct {
	Polynomial chunker.Pol
	IDKey      []byte
	PackSize   int64
	FrameSize  int64 // 0: DefaultFrameSize
	// Version is the format version to create: 0 means FormatVersion; 1
	// makes a repository of one blob per frame (and a compression
	// dictionary), as stasis before frames did, for tests and comparisons.
	Version int
	DBGlobs []string
	Now     time.Time
	// CompressionLevel is the zstd level of every blob written (1..22);
	// 0 means DefaultCompressionLevel.
	CompressionLevel int

	// Password protects the first key file of an encrypted repository.
	Password []byte
	// KDF are the argon2id parameters of that key file; zero means
	// crypto.TuneKDF(500ms). Tests use crypto.TestKDFParams.
	KDF crypto.KDFParams
	// InsecureNoPassword creates an unencrypted repository, on purpose only.
	InsecureNoPassword bool
}

func newConfig(o InitOptions) (Config, error) {
	var err error
	pol := o.Polynomial
	if pol == 0 {
		if pol, err = chunker.RandomPolynomial(); err != nil {
			return Config{}, fmt.Errorf("choose chunker polynomial: %w", err)
		}
	}
	key := o.IDKey
	if key == nil {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return Config{}, err
		}
	}
	if len(key) != 32 {
		return Config{}, fmt.Errorf("id key must be 32 bytes")
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return Config{}, err
	}
	c := Config{
		Format: configFormat, Version: FormatVersion, ID: hex.EncodeToString(id),
		Created: o.Now, ChunkerPolynomial: strconv.FormatUint(uint64(pol), 16),
		IDKey:    hex.EncodeToString(key),
		Profiles: map[ProfileName]ChunkProfile{ProfileNameDefault: ProfileDefault, ProfileNameDB: ProfileDB},
		DBGlobs:  o.DBGlobs, Compression: CompressionZstd, CompressionLevel: o.CompressionLevel, PackSize: o.PackSize,
		Encrypted: !o.InsecureNoPassword, FrameSize: o.FrameSize,
	}
	switch o.Version {
	case 0, FormatVersion:
		if c.FrameSize == 0 {
			c.FrameSize = DefaultFrameSize
		}
	case 1:
		c.Version, c.FrameSize = 1, 0
	default:
		return Config{}, fmt.Errorf("%w %d: this stasis creates versions 1 and %d", ErrVersion, o.Version, FormatVersion)
	}
	if c.CompressionLevel == 0 {
		c.CompressionLevel = DefaultCompressionLevel
	}
	if c.Created.IsZero() {
		c.Created = time.Now()
	}
	if c.DBGlobs == nil {
		c.DBGlobs = []string{"*.db"}
	}
	if c.PackSize == 0 {
		c.PackSize = 16 << 20
	}
	return c, c.validate()
}

// maxConfigSize bounds what DecodeConfig accepts; real config files are < 1 KiB.
const maxConfigSize = 64 << 10

// DecodeConfig parses and validates a config file. For an encrypted
// repository it checks the public fields only: the secrets are opened by Open.
func DecodeConfig(b []byte) (Config, error) {
	var c Config
	if len(b) > maxConfigSize {
		return c, fmt.Errorf("config: %d bytes, more than the %d a config file can have; is this a stasis repository?", len(b), maxConfigSize)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("decode config: %w", err)
	}
	if c.Format != configFormat {
		return c, fmt.Errorf("config: format %q is not %q", c.Format, configFormat)
	}
	if c.Version != 1 && c.Version != FormatVersion {
		return c, fmt.Errorf("config: %w %d (this stasis reads versions 1 and %d; use a newer stasis)", ErrVersion, c.Version, FormatVersion)
	}
	if c.Encrypted {
		if c.ChunkerPolynomial != "" || c.IDKey != "" {
			return c, fmt.Errorf("config: an encrypted repository must not show chunker_polynomial or id_key in the clear")
		}
		if len(c.Secrets) < crypto.Overhead || len(c.Secrets) > 4096 {
			return c, fmt.Errorf("config: sealed secrets of %d bytes, want %d..4096", len(c.Secrets), crypto.Overhead)
		}
		return c, c.validatePublic()
	}
	if c.Secrets != nil {
		return c, fmt.Errorf("config: an unencrypted repository has no secrets field")
	}
	return c, c.validate()
}

// validate checks a complete config: secrets (polynomial, id key of a plain
// repository) and public fields.
func (c Config) validate() error {
	if _, err := c.polynomial(); err != nil {
		return err
	}
	if !c.Encrypted {
		if k, err := hex.DecodeString(c.IDKey); err != nil || len(k) != 32 {
			return fmt.Errorf("config: id_key is not 64 hex digits")
		}
	}
	return c.validatePublic()
}

// validatePublic checks the fields an encrypted config shows in the clear.
func (c Config) validatePublic() error {
	if len(c.ID) != 32 {
		return fmt.Errorf("config: id %q is not 32 hex digits", c.ID)
	}
	for _, name := range profileNames {
		p, ok := c.Profiles[name]
		if !ok {
			return fmt.Errorf("config: chunk profile %q missing", name)
		}
		if p.Min < 64 || p.Max < p.Min || p.Max > 64<<20 || p.AvgBits < 8 || p.AvgBits > 26 {
			return fmt.Errorf("config: chunk profile %q has bad bounds %+v", name, p)
		}
	}
	if c.Compression != CompressionZstd && c.Compression != CompressionNone {
		return fmt.Errorf("config: unknown compression %q", c.Compression)
	}
	if c.Compression == CompressionZstd && (c.CompressionLevel < 1 || c.CompressionLevel > 22) {
		return fmt.Errorf("config: compression_level %d out of range 1..22", c.CompressionLevel)
	}
	if c.PackSize < 1<<16 || c.PackSize > 1<<30 {
		return fmt.Errorf("config: pack_size %d out of range", c.PackSize)
	}
	switch {
	case c.Version == 1 && c.FrameSize != 0:
		return fmt.Errorf("config: a version 1 repository has no frame_size")
	case c.Version >= 2 && (c.FrameSize < MinFrameSize || c.FrameSize > MaxFrameSize):
		return fmt.Errorf("config: frame_size %d out of range %d..%d", c.FrameSize, MinFrameSize, MaxFrameSize)
	}
	return nil
}

func (c Config) polynomial() (chunker.Pol, error) {
	v, err := strconv.ParseUint(c.ChunkerPolynomial, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("config: chunker_polynomial %q: %w", c.ChunkerPolynomial, err)
	}
	p := chunker.Pol(v)
	if !p.Irreducible() {
		return 0, fmt.Errorf("config: chunker_polynomial %q is not irreducible", c.ChunkerPolynomial)
	}
	return p, nil
}

// Polynomial returns the chunker polynomial (validated at open).
func (c Config) Polynomial() chunker.Pol { p, _ := c.polynomial(); return p }
