package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/stasisbackup/stasis/internal/backendtest"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/backend/s3"
)

func TestMain(m *testing.M) { backendtest.Main(m) }

func TestConformance(t *testing.T) {
	srv := backendtest.Seaweed(t)
	t.Logf("SeaweedFS at %s started in %v", srv.Endpoint, srv.Startup)
	backendtest.RunConformance(t, func(t *testing.T) backend.Storage {
		return srv.NewTarget(t).Open(t)
	})
}

// TestConformanceBucketRoot runs the suite on a repository at the root of
// a bucket (no key prefix).
func TestConformanceBucketRoot(t *testing.T) {
	srv := backendtest.Seaweed(t)
	backendtest.RunConformance(t, func(t *testing.T) backend.Storage {
		return srv.TargetIn(t, srv.NewBucket(t), "").Open(t)
	})
}

func TestConformanceTwoVolumeServers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a second SeaweedFS")
	}
	srv := backendtest.SeaweedTwoVolumes(t)
	t.Logf("SeaweedFS with two volume servers at %s started in %v", srv.Endpoint, srv.Startup)
	backendtest.RunConformance(t, func(t *testing.T) backend.Storage {
		return srv.NewTarget(t).Open(t)
	})
	nodes := srv.VolumesByServer(t)
	t.Logf("volumes by server: %v", nodes)
	if len(nodes) != 2 {
		t.Errorf("volume servers %v, want 2", nodes)
	}
	for addr, n := range nodes {
		if n == 0 {
			t.Errorf("volume server %s holds no volume: %v", addr, nodes)
		}
	}
}

func TestParse(t *testing.T) {
	for _, c := range []struct {
		url  string
		want s3.Config
	}{
		{"s3:http://127.0.0.1:8333/bucket", s3.Config{Endpoint: "127.0.0.1:8333", Bucket: "bucket"}},
		{"s3:http://127.0.0.1:8333/bucket/", s3.Config{Endpoint: "127.0.0.1:8333", Bucket: "bucket"}},
		{"s3:https://s3.amazonaws.com/my-bucket/a/b", s3.Config{Endpoint: "s3.amazonaws.com", Secure: true, Bucket: "my-bucket", Prefix: "a/b"}},
		{"s3:https://s3.amazonaws.com/my-bucket/a/b/", s3.Config{Endpoint: "s3.amazonaws.com", Secure: true, Bucket: "my-bucket", Prefix: "a/b"}},
		{"s3:http://minio:9000/b.dots/repo", s3.Config{Endpoint: "minio:9000", Bucket: "b.dots", Prefix: "repo"}},
		{"s3:http://[::1]:9000/bkt", s3.Config{Endpoint: "[::1]:9000", Bucket: "bkt"}},
	} {
		got, err := s3.Parse(c.url)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.url, err)
			continue
		}
		if got != c.want {
			t.Errorf("Parse(%q) = %+v, want %+v", c.url, got, c.want)
		}
		if back, err := s3.Parse(got.URL()); err != nil || back != got {
			t.Errorf("Parse(%q).URL() = %q does not parse back: %+v, %v", c.url, got.URL(), back, err)
		}
	}
	for _, c := range []struct{ url, why string }{
		{"http://host/bucket", "does not start with s3:"},
		{"s3:host/bucket", "no http:// or https://"},
		{"s3://bucket/prefix", "no http:// or https://"},
		{"s3:ftp://host/bucket", `"ftp"`},
		{"s3:http:///bucket", "no host"},
		{"s3:http://host", "no bucket"},
		{"s3:http://host/", "no bucket"},
		{"s3:http://host//prefix", "bucket"},
		{"s3:http://host/Bu_cket!", "bucket"},
		{"s3:http://host/b", "bucket"},
		{"s3:http://host/bucket/a//b", "prefix"},
		{"s3:http://host/bucket/a/../b", "prefix"},
		{"s3:http://host/bucket/./b", "prefix"},
		{"s3:http://key:secret@host/bucket", "credentials"},
		{"s3:http://host/bucket?x=1", "query"},
		{"s3:http://host/bucket#f", "fragment"},
		{"s3:http://host:99999/bucket", "port"},
		{"s3:http://host:port/bucket", ""},
	} {
		_, err := s3.Parse(c.url)
		if err == nil {
			t.Errorf("Parse(%q) succeeded", c.url)
			continue
		}
		if !strings.Contains(err.Error(), c.url) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("Parse(%q): %q, want an error naming the URL and saying %q", c.url, err, c.why)
		}
	}
}

func TestOpenCredentials(t *testing.T) {
	cfg, err := s3.Parse("s3:http://127.0.0.1:1/bucket")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(s3.EnvAccessKeyID, "")
	t.Setenv(s3.EnvSecretAccessKey, "")
	_, err = s3.Open(t.Context(), cfg)
	if err == nil || !strings.Contains(err.Error(), s3.EnvAccessKeyID) || !strings.Contains(err.Error(), s3.EnvSecretAccessKey) {
		t.Errorf("Open without credentials: %v, want an error naming both variables", err)
	}
	t.Setenv(s3.EnvAccessKeyID, "id")
	_, err = s3.Open(t.Context(), cfg)
	if err == nil || strings.Contains(err.Error(), s3.EnvAccessKeyID+" ") || !strings.Contains(err.Error(), s3.EnvSecretAccessKey) {
		t.Errorf("Open without a secret key: %v, want an error naming only %s", err, s3.EnvSecretAccessKey)
	}
}

func TestOpenEnvAndLocation(t *testing.T) {
	srv := backendtest.Seaweed(t)
	tg := srv.NewTarget(t)
	tg.Setenv(t)
	cfg, err := s3.Parse(tg.URL)
	if err != nil {
		t.Fatal(err)
	}
	st, err := s3.Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("open with credentials from the environment: %v", err)
	}
	if st.Location() != tg.URL {
		t.Errorf("Location %q, want %q", st.Location(), tg.URL)
	}
	if strings.Contains(st.Location(), backendtest.SeaweedSecretKey) || strings.Contains(st.Location(), backendtest.SeaweedAccessKey) {
		t.Errorf("Location %q shows credentials", st.Location())
	}
	// The repository's names are PREFIX/NAME in the bucket.
	if err := backend.PutBytes(t.Context(), st, "packs/ab/x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if keys := srv.ObjectKeys(t, cfg.Bucket, cfg.Prefix+"/"); !slices.Equal(keys, []string{cfg.Prefix + "/packs/ab/x"}) {
		t.Errorf("keys in the bucket: %q, want [%s/packs/ab/x]", keys, cfg.Prefix)
	}
}

func TestOpenWrongCredentials(t *testing.T) {
	tg := backendtest.Seaweed(t).NewTarget(t)
	cfg := tg.Config
	cfg.SecretAccessKey = "wrong"
	cfg.MaxAttempts = 1
	_, err := s3.Open(t.Context(), cfg)
	if err == nil {
		t.Fatal("open with a wrong secret key succeeded")
	}
	if errors.Is(err, backend.ErrNotExist) || errors.Is(err, s3.ErrNoBucket) {
		t.Errorf("open with a wrong secret key: %v, want an authentication error", err)
	}
}

func TestOpenMissingBucket(t *testing.T) {
	srv := backendtest.Seaweed(t)
	tg := srv.TargetIn(t, "stasis-missing-bucket", "repo")
	_, err := s3.Open(t.Context(), tg.Config)
	if !errors.Is(err, s3.ErrNoBucket) || !strings.Contains(err.Error(), "stasis-missing-bucket") {
		t.Fatalf("open of a missing bucket: %v, want ErrNoBucket naming it", err)
	}
	tg = srv.TargetIn(t, fmt.Sprintf("stasis-created-%d", time.Now().UnixNano()), "repo")
	cfg := tg.Config
	cfg.CreateBucket = true
	st, err := s3.Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("open with CreateBucket: %v", err)
	}
	if err := backend.PutBytes(t.Context(), st, "config", []byte("c")); err != nil {
		t.Errorf("put into the created bucket: %v", err)
	}
	if _, err := s3.Open(t.Context(), cfg); err != nil {
		t.Errorf("open with CreateBucket of an existing bucket: %v", err)
	}
}

func TestNotExistMapping(t *testing.T) {
	st, tg := backendtest.NewS3(t)
	_, err := st.Stat(t.Context(), "snapshots/none")
	if !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("stat of a missing object: %v", err)
	}
	if err == nil || !strings.Contains(err.Error(), tg.URL+"/snapshots/none") {
		t.Errorf("stat error %q does not name the object", err)
	}
	_, err = st.Get(t.Context(), "snapshots/none", 10, 5)
	if !errors.Is(err, backend.ErrNotExist) || !strings.Contains(err.Error(), "snapshots/none") {
		t.Errorf("ranged get of a missing object: %v", err)
	}
	err = st.Delete(t.Context(), "snapshots/none")
	if !errors.Is(err, backend.ErrNotExist) || !strings.Contains(err.Error(), "snapshots/none") {
		t.Errorf("delete of a missing object: %v", err)
	}
	// Other errors do not match ErrNotExist.
	cfg := tg.Config
	cfg.SecretAccessKey = "wrong"
	cfg.MaxAttempts = 1
	if _, err := s3.Open(t.Context(), cfg); errors.Is(err, backend.ErrNotExist) {
		t.Errorf("an authentication error matches ErrNotExist: %v", err)
	}
}

// TestPutMultipartLeavesNoUploads: a 16 MiB pack goes up in two parts; a
// failed multipart upload leaves neither an object nor an incomplete
// upload.
func TestPutMultipart(t *testing.T) {
	srv := backendtest.Seaweed(t)
	tg := srv.NewTarget(t)
	st := tg.Open(t)
	data := backendtest.Data(1, 16<<20)
	var reads atomic.Int64
	r := readerAtFunc(func(p []byte, off int64) (int, error) {
		reads.Add(1)
		return bytes.NewReader(data).ReadAt(p, off)
	})
	if err := st.Put(t.Context(), "packs/ab/pack", r, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	got, err := backend.ReadAll(t.Context(), st, "packs/ab/pack", 32<<20)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("multipart object: %d bytes, %v", len(got), err)
	}
	// A multipart upload's ETag is "md5-of-md5s-PARTS".
	info, err := srv.Client().StatObject(t.Context(), tg.Config.Bucket, tg.Config.Prefix+"/packs/ab/pack", minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(strings.Trim(info.ETag, `"`), "-2") {
		t.Errorf("ETag %q of a 16 MiB object: not a 2-part multipart upload", info.ETag)
	}
	broken := errors.New("broken")
	fail := readerAtFunc(func(p []byte, off int64) (int, error) {
		if off+int64(len(p)) > 12<<20 {
			return 0, broken
		}
		return bytes.NewReader(data).ReadAt(p, off)
	})
	if err := st.Put(t.Context(), "packs/ab/failed", fail, int64(len(data))); !errors.Is(err, broken) {
		t.Errorf("multipart put from a failing reader: %v", err)
	}
	if keys := srv.ObjectKeys(t, tg.Config.Bucket, tg.Config.Prefix+"/"); !slices.Equal(keys, []string{tg.Config.Prefix + "/packs/ab/pack"}) {
		t.Errorf("keys after a failed multipart put: %q", keys)
	}
	uploads := 0
	for u := range srv.Client().ListIncompleteUploads(t.Context(), tg.Config.Bucket, tg.Config.Prefix+"/", true) {
		if u.Err != nil {
			t.Logf("list incomplete uploads: %v", u.Err)
			break
		}
		uploads++
	}
	if uploads != 0 {
		t.Errorf("%d incomplete uploads left behind", uploads)
	}
}

func TestPutShortReader(t *testing.T) {
	st, _ := backendtest.NewS3(t)
	err := st.Put(t.Context(), "config", bytes.NewReader([]byte("short")), 100)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("put of 100 bytes from a 5-byte reader: %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := st.Stat(t.Context(), "config"); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("a short put created the object: %v", err)
	}
}

type readerAtFunc func(p []byte, off int64) (int, error)

func (f readerAtFunc) ReadAt(p []byte, off int64) (int, error) { return f(p, off) }

// flaky is a reverse proxy to SeaweedFS that answers the first fails
// matching requests with an error status, counting requests.
type flaky struct {
	proxy  *httputil.ReverseProxy
	status int
	code   string
	match  func(*http.Request) bool

	mu       sync.Mutex
	fails    int
	requests []string // method of every matching request
	bodies   []int64  // bytes of the body of every matching request
}

func (f *flaky) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.match == nil || f.match(r) {
		n, _ := io.Copy(io.Discard, io.NopCloser(r.Body)) // read what the client sends, as a server would
		f.mu.Lock()
		f.requests = append(f.requests, r.Method)
		f.bodies = append(f.bodies, n)
		fail := f.fails > 0
		if fail {
			f.fails--
		}
		f.mu.Unlock()
		if fail {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(f.status)
			if r.Method != http.MethodHead {
				fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>injected</Message></Error>`, f.code)
			}
			return
		}
		// The body was consumed: hand the proxy what was read. Only bodiless
		// requests (and PUTs the tests replay) reach here.
		r.Body = io.NopCloser(bytes.NewReader(nil))
		if n > 0 {
			panic("flaky: cannot proxy a consumed body")
		}
	}
	f.proxy.ServeHTTP(w, r)
}

func (f *flaky) counts() (int, []int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests), slices.Clone(f.bodies)
}

// newFlaky puts a flaky proxy in front of the target's SeaweedFS and
// returns the target's config pointing at the proxy.
func newFlaky(t *testing.T, tg backendtest.S3Target, f *flaky) s3.Config {
	t.Helper()
	up, err := url.Parse("http://" + tg.Config.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	f.proxy = httputil.NewSingleHostReverseProxy(up)
	// The signature covers the Host header: keep the client's.
	director := f.proxy.Director
	f.proxy.Director = func(r *http.Request) { host := r.Host; director(r); r.Host = host }
	ts := httptest.NewServer(f)
	t.Cleanup(ts.Close)
	cfg := tg.Config
	cfg.Endpoint = strings.TrimPrefix(ts.URL, "http://")
	cfg.RetryDelay = time.Millisecond
	return cfg
}

func TestRetryThenSucceed(t *testing.T) {
	srv := backendtest.Seaweed(t)
	tg := srv.NewTarget(t)
	data := []byte("the config")
	if err := backend.PutBytes(t.Context(), tg.Open(t), "config", data); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		status int
		code   string
	}{
		{503, "SlowDown"},
		{429, "TooManyRequests"},
		{500, "InternalError"},
		{502, "BadGateway"},
	} {
		t.Run(fmt.Sprint(c.status), func(t *testing.T) {
			f := &flaky{status: c.status, code: c.code, match: func(r *http.Request) bool {
				return r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/config")
			}}
			cfg := newFlaky(t, tg, f)
			st, err := s3.Open(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			f.mu.Lock()
			f.fails = 2
			f.mu.Unlock()
			got, err := backend.ReadAll(t.Context(), st, "config", 100)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("get through two %d answers: %q, %v", c.status, got, err)
			}
			if n, _ := f.counts(); n != 3 {
				t.Errorf("%d GET requests, want 3 (two failed, one succeeded)", n)
			}
		})
	}
}

func isHeadConfig(r *http.Request) bool {
	return r.Method == http.MethodHead && strings.HasSuffix(r.URL.Path, "/config")
}

func TestRetryBounded(t *testing.T) {
	tg := backendtest.Seaweed(t).NewTarget(t)
	f := &flaky{status: 503, code: "SlowDown", match: isHeadConfig}
	cfg := newFlaky(t, tg, f)
	st, err := s3.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.fails = 1000
	f.mu.Unlock()
	_, err = st.Stat(t.Context(), "config")
	if err == nil || errors.Is(err, backend.ErrNotExist) || !strings.Contains(err.Error(), "after 6 attempts") {
		t.Errorf("stat against a server that is always slow: %v, want an error after 6 attempts", err)
	}
	if n, _ := f.counts(); n != s3.DefaultMaxAttempts {
		t.Errorf("%d HEAD requests, want %d", n, s3.DefaultMaxAttempts)
	}
}

func TestNoRetryOnClientErrors(t *testing.T) {
	tg := backendtest.Seaweed(t).NewTarget(t)
	f := &flaky{status: 403, code: "AccessDenied", match: isHeadConfig}
	cfg := newFlaky(t, tg, f)
	st, err := s3.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.fails = 1000
	f.mu.Unlock()
	if _, err := st.Stat(t.Context(), "config"); err == nil {
		t.Error("stat answered 403 succeeded")
	}
	if n, _ := f.counts(); n != 1 {
		t.Errorf("%d HEAD requests for a 403, want 1 (no retry)", n)
	}
	// A missing object (404) is not retried either.
	f.mu.Lock()
	f.fails = 0
	f.requests = nil
	f.mu.Unlock()
	if _, err := st.Stat(t.Context(), "config"); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("stat of a missing object: %v", err)
	}
	if n, _ := f.counts(); n != 1 {
		t.Errorf("%d HEAD requests for a 404, want 1", n)
	}
}

// TestRetryPut: a PUT answered 503 twice is sent three times, each time
// with the whole object (re-read from offset 0), and the object is whole.
func TestRetryPut(t *testing.T) {
	tg := backendtest.Seaweed(t).NewTarget(t)
	f := &flaky{status: 503, code: "SlowDown", match: func(r *http.Request) bool { return r.Method == http.MethodPut }}
	cfg := newFlaky(t, tg, f)
	st, err := s3.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	data := backendtest.Data(2, 100<<10)
	var offsets []int64
	var mu sync.Mutex
	r := readerAtFunc(func(p []byte, off int64) (int, error) {
		mu.Lock()
		offsets = append(offsets, off)
		mu.Unlock()
		return bytes.NewReader(data).ReadAt(p, off)
	})
	f.mu.Lock()
	f.fails = 2
	f.mu.Unlock()
	// The proxy consumes the failed PUTs' bodies; the third attempt must
	// reach the server, so it is let through unread.
	f.match = func(r *http.Request) bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return r.Method == http.MethodPut && f.fails > 0
	}
	if err := st.Put(t.Context(), "packs/ab/p", r, int64(len(data))); err != nil {
		t.Fatalf("put through two 503s: %v", err)
	}
	n, bodies := f.counts()
	if n != 2 {
		t.Errorf("%d failed PUTs seen, want 2", n)
	}
	for i, b := range bodies {
		if b < int64(len(data)) {
			t.Errorf("failed PUT %d carried %d bytes, want the whole %d", i, b, len(data))
		}
	}
	zero := 0
	for _, o := range offsets {
		if o == 0 {
			zero++
		}
	}
	if zero != 3 {
		t.Errorf("the reader was read from offset 0 %d times, want 3 (once per attempt)", zero)
	}
	got, err := backend.ReadAll(t.Context(), tg.Open(t), "packs/ab/p", 1<<20)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("object after retried put: %d bytes, %v", len(got), err)
	}
}

// TestRetryConnectionRefused: an endpoint nobody listens on is tried
// MaxAttempts times, and a cancelled context stops the waiting.
func TestRetryConnectionRefused(t *testing.T) {
	ts := httptest.NewServer(http.NotFoundHandler())
	addr := strings.TrimPrefix(ts.URL, "http://")
	ts.Close() // nothing listens there now
	cfg, err := s3.Parse("s3:http://" + addr + "/bucket")
	if err != nil {
		t.Fatal(err)
	}
	cfg.AccessKeyID, cfg.SecretAccessKey, cfg.Region = "k", "s", "us-east-1"
	cfg.MaxAttempts, cfg.RetryDelay = 3, 10*time.Millisecond
	start := time.Now()
	_, err = s3.Open(t.Context(), cfg)
	if err == nil || !strings.Contains(err.Error(), "after 3 attempts") {
		t.Errorf("open of a closed port: %v, want an error after 3 attempts", err)
	}
	if d := time.Since(start); d < 10*time.Millisecond {
		t.Errorf("3 attempts took %v: no backoff", d)
	}
	cfg.MaxAttempts, cfg.RetryDelay = 6, time.Hour
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = s3.Open(ctx, cfg)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("open with a context that ends during the backoff: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the backoff did not respect the context: %v", d)
	}
}
