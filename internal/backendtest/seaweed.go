package backendtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/stasisbackup/stasis/repo/backend/s3"
)

// Environment variables of the harness.
const (
	// EnvWeed names the weed binary. When it is set, a missing or broken
	// binary fails the tests instead of skipping them (CI sets it).
	EnvWeed = "STASIS_WEED"
	// EnvCICache overrides the cache directory .ci/build-seaweedfs builds
	// into (default ${XDG_CACHE_HOME:-$HOME/.cache}/stasis-ci).
	EnvCICache = "STASIS_CI_CACHE"
)

// Credentials of the harness's S3 identity.
const (
	SeaweedAccessKey = "stasis-test-access-key"
	SeaweedSecretKey = "stasis-test-secret-key-0123456789abcdef"
	SeaweedRegion    = "us-east-1"
	// SeaweedBucket is the bucket NewTarget makes prefixes in.
	SeaweedBucket = "stasis-test"
)

// SeaweedServer is a running SeaweedFS with an S3 gateway on loopback.
type SeaweedServer struct {
	// Endpoint is the host:port of the S3 API (plain http).
	Endpoint string
	// Dir holds the server's data and log.
	Dir string
	// Startup is how long starting it took, until it took a write.
	Startup time.Duration
	// VolumeServers is the number of volume servers.
	VolumeServers int
	// MasterURL is the master's HTTP address (http://127.0.0.1:PORT).
	MasterURL string

	procs   []*process
	sockets []string
	client  *minio.Client

	mu sync.Mutex
	n  int
}

type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it exited
	err  error         // of Wait, once done is closed
}

var seaweeds struct {
	mu      sync.Mutex
	servers map[int]*seaweedSlot // by number of volume servers
}

type seaweedSlot struct {
	srv *SeaweedServer
	err error
}

// WeedBinary returns the path of the weed binary: $STASIS_WEED, or else
// the newest weed-* executable in the cache directory of
// .ci/build-seaweedfs. explicit reports whether it came from $STASIS_WEED.
func WeedBinary() (path string, explicit bool, err error) {
	if p := os.Getenv(EnvWeed); p != "" {
		fi, err := os.Stat(p)
		if err != nil {
			return "", true, fmt.Errorf("%s=%s: %w", EnvWeed, p, err)
		}
		if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			return "", true, fmt.Errorf("%s=%s: not an executable file", EnvWeed, p)
		}
		return p, true, nil
	}
	cache := os.Getenv(EnvCICache)
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", false, fmt.Errorf("no cache directory: %w", err)
			}
			base = filepath.Join(home, ".cache")
		}
		cache = filepath.Join(base, "stasis-ci")
	}
	matches, _ := filepath.Glob(filepath.Join(cache, "weed-*"))
	var best string
	var bestTime time.Time
	for _, m := range matches {
		if strings.HasSuffix(m, ".tmp") {
			continue
		}
		fi, err := os.Stat(m)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			continue
		}
		if best == "" || fi.ModTime().After(bestTime) {
			best, bestTime = m, fi.ModTime()
		}
	}
	if best == "" {
		return "", false, fmt.Errorf("no weed binary: %s is unset and %s has no weed-* executable; build it with `bash .ci/build-seaweedfs`", EnvWeed, cache)
	}
	return best, false, nil
}

// Seaweed returns the test binary's SeaweedFS server (one volume server),
// starting it on first use. Without a weed binary it skips the test
// (fails it when $STASIS_WEED is set); a server that does not start fails
// it.
func Seaweed(t testing.TB) *SeaweedServer {
	t.Helper()
	return seaweed(t, 1)
}

// SeaweedTwoVolumes is Seaweed with two volume servers (the second one a
// separate `weed volume` process) and replication 001, so that every object
// is written to both servers and read from either. It is a different
// server from Seaweed's.
func SeaweedTwoVolumes(t testing.TB) *SeaweedServer {
	t.Helper()
	return seaweed(t, 2)
}

func seaweed(t testing.TB, volumes int) *SeaweedServer {
	t.Helper()
	bin, explicit, err := WeedBinary()
	if err != nil {
		if explicit {
			t.Fatalf("SeaweedFS: %v", err)
		}
		t.Skipf("SeaweedFS: %v", err)
	}
	seaweeds.mu.Lock()
	defer seaweeds.mu.Unlock()
	if seaweeds.servers == nil {
		seaweeds.servers = map[int]*seaweedSlot{}
	}
	slot := seaweeds.servers[volumes]
	if slot == nil {
		slot = &seaweedSlot{}
		slot.srv, slot.err = startSeaweed(bin, volumes)
		seaweeds.servers[volumes] = slot
	}
	if slot.err != nil {
		t.Fatalf("SeaweedFS: %v", slot.err)
	}
	return slot.srv
}

// StartSeaweed starts a SeaweedFS server with the given number of volume
// servers (1, or 2 for replication 001 as in SeaweedTwoVolumes) for use
// outside tests (the benchmark cmd/stasis-bench): the weed binary is the one
// WeedBinary finds, SeaweedBucket exists, and the credentials are
// SeaweedAccessKey and SeaweedSecretKey. The server is the caller's own, not
// shared with Seaweed; the caller must Stop it (its processes also get
// SIGKILL when the starting thread dies).
func StartSeaweed(volumes int) (*SeaweedServer, error) {
	if volumes < 1 {
		return nil, fmt.Errorf("SeaweedFS: %d volume servers: want at least 1", volumes)
	}
	bin, _, err := WeedBinary()
	if err != nil {
		return nil, fmt.Errorf("SeaweedFS: %w", err)
	}
	return startSeaweed(bin, volumes)
}

// StopSeaweed stops the servers Seaweed and SeaweedTwoVolumes started and
// removes their data. A later Seaweed starts a new one.
func StopSeaweed() {
	seaweeds.mu.Lock()
	defer seaweeds.mu.Unlock()
	for k, slot := range seaweeds.servers {
		if slot.srv != nil {
			slot.srv.Stop()
		}
		delete(seaweeds.servers, k)
	}
}

// Main runs the tests of m, stops the SeaweedFS servers and exits: the
// TestMain of a package that uses Seaweed.
func Main(m *testing.M) {
	code := m.Run()
	StopSeaweed()
	os.Exit(code)
}

// freePorts returns n distinct free TCP ports on 127.0.0.1 (held open
// together while choosing, so they differ).
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func startSeaweed(bin string, volumes int) (*SeaweedServer, error) {
	var errs []error
	// A port chosen free can be taken before weed binds it; then weed
	// exits and another set of ports is tried.
	for range 3 {
		s, err := tryStartSeaweed(bin, volumes)
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
		if !errors.Is(err, errExited) {
			break
		}
	}
	return nil, errors.Join(errs...)
}

var errExited = errors.New("weed exited")

// weedPorts are the loopback ports of one server: the master, the first
// volume server, the filer and the S3 gateway (each with its gRPC port),
// and the ports of the further volume servers.
type weedPorts struct {
	master, masterGrpc, volume, volumeGrpc, filer, filerGrpc, s3, s3Grpc int
	volumes                                                              [][2]int // port, gRPC port of volume server 2, 3, ...
}

// freeWeedPorts picks the ports of a server with the given number of
// volume servers.
func freeWeedPorts(volumes int) (weedPorts, error) {
	ports, err := freePorts(8 + 2*(volumes-1))
	if err != nil {
		return weedPorts{}, err
	}
	p := weedPorts{master: ports[0], masterGrpc: ports[1], volume: ports[2], volumeGrpc: ports[3],
		filer: ports[4], filerGrpc: ports[5], s3: ports[6], s3Grpc: ports[7]}
	for i := 1; i < volumes; i++ {
		p.volumes = append(p.volumes, [2]int{ports[8+2*(i-1)], ports[9+2*(i-1)]})
	}
	return p, nil
}

func tryStartSeaweed(bin string, volumes int) (s *SeaweedServer, err error) {
	begin := time.Now()
	removeStale()
	dir, err := os.MkdirTemp("", "stasis-weed-*")
	if err != nil {
		return nil, err
	}
	s = &SeaweedServer{Dir: dir, VolumeServers: volumes}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	ports, err := freeWeedPorts(volumes)
	if err != nil {
		return nil, err
	}
	s.Endpoint = "127.0.0.1:" + strconv.Itoa(ports.s3)
	s.MasterURL = "http://127.0.0.1:" + strconv.Itoa(ports.master)
	cfgPath, err := writeSeaweedConfig(dir)
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		return nil, err
	}
	if err := s.writeOwner(ports); err != nil {
		return nil, err
	}
	if err := s.spawn(bin, filepath.Join(dir, "server.log"), serverArgs(dir, data, cfgPath, ports, volumes)); err != nil {
		return nil, err
	}
	if err := s.spawnVolumes(bin, ports); err != nil {
		return nil, err
	}
	client, err := minio.New(s.Endpoint, &minio.Options{
		Creds:      credentials.NewStaticV4(SeaweedAccessKey, SeaweedSecretKey, ""),
		Region:     SeaweedRegion,
		MaxRetries: 1,
	})
	if err != nil {
		return nil, err
	}
	s.client = client
	if err := s.waitReady(90 * time.Second); err != nil {
		return nil, err
	}
	s.Startup = time.Since(begin)
	return s, nil
}

// writeSeaweedConfig writes the server's configuration into dir and
// returns the path of the S3 gateway's (the harness's identity).
func writeSeaweedConfig(dir string) (s3Config string, err error) {
	cfg, err := json.Marshal(map[string]any{"identities": []any{map[string]any{
		"name":        "stasis",
		"credentials": []any{map[string]string{"accessKey": SeaweedAccessKey, "secretKey": SeaweedSecretKey}},
		"actions":     []string{"Admin", "Read", "List", "Tagging", "Write"},
	}}})
	if err != nil {
		return "", err
	}
	cfgPath := filepath.Join(dir, "s3.json")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		return "", err
	}
	// Every bucket is a collection, and the master grows a collection by
	// 7 volumes at a time by default; one (of one or two copies) is enough
	// here and leaves room for many buckets. The allocation deferral is
	// for rebuilt masters. An empty security.toml here shadows any in
	// ~/.seaweedfs or /etc/seaweedfs.
	masterToml := "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\nallocation_deferral = \"0s\"\n"
	if err := os.WriteFile(filepath.Join(dir, "master.toml"), []byte(masterToml), 0o600); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "security.toml"), nil, 0o600); err != nil {
		return "", err
	}
	return cfgPath, nil
}

// serverArgs are the arguments of `weed server`: master, the first volume
// server, filer and S3 gateway in one process, data in data.
func serverArgs(dir, data, cfgPath string, p weedPorts, volumes int) []string {
	itoa := strconv.Itoa
	args := []string{"-config_dir", dir, "server",
		"-dir", data, "-ip", "127.0.0.1", "-ip.bind", "127.0.0.1",
		"-master.port", itoa(p.master), "-master.port.grpc", itoa(p.masterGrpc),
		// Small volumes, many slots: every bucket is a collection with
		// volumes of its own.
		"-master.volumeSizeLimitMB", "64", "-volume.max", "100",
		"-volume.port", itoa(p.volume), "-volume.port.grpc", itoa(p.volumeGrpc), "-volume.preStopSeconds", "0",
		"-filer", "-filer.port", itoa(p.filer), "-filer.port.grpc", itoa(p.filerGrpc),
		"-s3", "-s3.port", itoa(p.s3), "-s3.port.grpc", itoa(p.s3Grpc), "-s3.config", cfgPath,
		"-s3.port.iceberg", "0", "-s3.port.lance", "0",
	}
	if volumes > 1 {
		// Every volume has a copy on two servers (of the same rack), so
		// every write goes to two and reads to either.
		args = append(args, "-master.defaultReplication", "001")
	}
	return args
}

// writeOwner records the server's sockets (weed puts its local sockets in
// /tmp, named by port) and writes the owner file.
func (s *SeaweedServer) writeOwner(p weedPorts) error {
	s.sockets = []string{
		fmt.Sprintf("/tmp/seaweedfs-master-grpc-%d.sock", p.masterGrpc),
		fmt.Sprintf("/tmp/seaweedfs-volume-grpc-%d.sock", p.volumeGrpc),
		fmt.Sprintf("/tmp/seaweedfs-filer-grpc-%d.sock", p.filerGrpc),
		fmt.Sprintf("/tmp/seaweedfs-filer-%d.sock", p.filer),
		fmt.Sprintf("/tmp/seaweedfs-s3-%d.sock", p.s3),
		fmt.Sprintf("/tmp/seaweedfs-s3-grpc-%d.sock", p.s3Grpc),
	}
	owner := strconv.Itoa(os.Getpid()) + "\n" + strings.Join(s.sockets, "\n") + "\n"
	return os.WriteFile(filepath.Join(s.Dir, ownerFile), []byte(owner), 0o600)
}

// spawnVolumes starts the volume servers after the first, each a `weed
// volume` process with a data directory of its own.
func (s *SeaweedServer) spawnVolumes(bin string, p weedPorts) error {
	itoa := strconv.Itoa
	for i, vp := range p.volumes {
		n := i + 2 // the server's number; the first is in `weed server`
		vdir := filepath.Join(s.Dir, "data"+itoa(n))
		if err := os.Mkdir(vdir, 0o700); err != nil {
			return err
		}
		port, grpcPort := vp[0], vp[1]
		vargs := []string{"-config_dir", s.Dir, "volume",
			"-dir", vdir, "-ip", "127.0.0.1", "-ip.bind", "127.0.0.1",
			"-port", itoa(port), "-port.grpc", itoa(grpcPort), "-max", "100", "-preStopSeconds", "0",
			// host:port.grpcPort, as the grpc port is not port+10000
			"-master", fmt.Sprintf("127.0.0.1:%d.%d", p.master, p.masterGrpc),
		}
		s.sockets = append(s.sockets, fmt.Sprintf("/tmp/seaweedfs-volume-grpc-%d.sock", grpcPort))
		if err := s.spawn(bin, filepath.Join(s.Dir, fmt.Sprintf("volume%d.log", n)), vargs); err != nil {
			return err
		}
	}
	return nil
}

// ownerFile in a server's directory holds the pid of the test binary that
// started it, then the paths of its sockets, one a line.
const ownerFile = "owner"

// removeStale removes the directories and sockets of servers whose test
// binary is gone (it exited without StopSeaweed; the servers died with it).
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "stasis-weed-*"))
	for _, d := range dirs {
		data, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err != nil {
			continue // starting, or not ours
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		pid, err := strconv.Atoi(lines[0])
		if err != nil || pid <= 0 || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // alive (or unreadable): leave it
		}
		for _, sock := range lines[1:] {
			if strings.HasPrefix(sock, "/tmp/seaweedfs-") && strings.HasSuffix(sock, ".sock") {
				os.Remove(sock)
			}
		}
		os.RemoveAll(d)
	}
}

// spawn starts weed with args, its output going to logPath. The process
// gets SIGKILL when the thread that started it dies; that thread is locked
// to a goroutine that waits for the process, so it lives as long as the
// process or the test binary.
func (s *SeaweedServer) spawn(bin, logPath string, args []string) error {
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = s.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &process{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := cmd.Start(); err != nil {
			logf.Close()
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	s.procs = append(s.procs, p)
	return nil
}

// waitReady polls until the S3 gateway takes a write into SeaweedBucket
// (which it creates) and the master sees every volume server, or a
// process exits, or the deadline passes.
func (s *SeaweedServer) waitReady(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	step := "bucket"
	for {
		for _, p := range s.procs {
			select {
			case <-p.done:
				return fmt.Errorf("%w before it was ready (%v): %s", errExited, p.err, s.logTail())
			default:
			}
		}
		switch step {
		case "bucket":
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			last = s.client.MakeBucket(rctx, SeaweedBucket, minio.MakeBucketOptions{Region: SeaweedRegion})
			rcancel()
			if c := minio.ToErrorResponse(last).Code; c == "BucketAlreadyOwnedByYou" || c == "BucketAlreadyExists" {
				last = nil
			}
			if last == nil {
				step = "volumes"
				continue
			}
		case "volumes":
			var nodes map[string]int
			nodes, last = s.volumesByServer(ctx)
			if last == nil && len(nodes) < s.VolumeServers {
				last = fmt.Errorf("the master sees %d of %d volume servers", len(nodes), s.VolumeServers)
			}
			if last == nil {
				step = "write"
				continue
			}
		case "write":
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			_, last = s.client.PutObject(rctx, SeaweedBucket, "ready-probe", strings.NewReader("ready"), 5, minio.PutObjectOptions{})
			if last == nil {
				last = s.client.RemoveObject(rctx, SeaweedBucket, "ready-probe", minio.RemoveObjectOptions{})
			}
			rcancel()
			if last == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %v (waiting for the %s step: %v): %s", timeout, step, last, s.logTail())
		case <-tick.C:
		}
	}
}

// VolumesByServer returns the number of volumes on every volume server
// the master knows, by server address.
func (s *SeaweedServer) VolumesByServer(t testing.TB) map[string]int {
	t.Helper()
	nodes, err := s.volumesByServer(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return nodes
}

func (s *SeaweedServer) volumesByServer(ctx context.Context) (map[string]int, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, s.MasterURL+"/dir/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st struct {
		Topology struct {
			DataCenters []struct {
				Racks []struct {
					DataNodes []struct {
						Url     string
						Volumes int
					}
				}
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("master %s/dir/status: %w", s.MasterURL, err)
	}
	nodes := map[string]int{}
	for _, dc := range st.Topology.DataCenters {
		for _, r := range dc.Racks {
			for _, n := range r.DataNodes {
				nodes[n.Url] += n.Volumes
			}
		}
	}
	return nodes, nil
}

// logTail returns the end of the server's logs, for error messages.
func (s *SeaweedServer) logTail() string {
	logs, _ := filepath.Glob(filepath.Join(s.Dir, "*.log"))
	var b strings.Builder
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		if len(data) > 3000 {
			data = data[len(data)-3000:]
		}
		fmt.Fprintf(&b, "\n--- %s:\n%s", l, data)
	}
	return b.String()
}

// Stop stops the server: SIGTERM, then SIGKILL after a short grace (weed
// takes seconds to exit on SIGTERM), and removes its data and sockets.
func (s *SeaweedServer) Stop() {
	for _, p := range s.procs {
		p.cmd.Process.Signal(syscall.SIGTERM)
	}
	grace := time.After(300 * time.Millisecond)
	for _, p := range s.procs {
		select {
		case <-p.done:
		case <-grace:
		}
	}
	for _, p := range s.procs {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	s.procs = nil
	for _, sock := range s.sockets {
		os.Remove(sock)
	}
	if s.Dir != "" {
		os.RemoveAll(s.Dir)
	}
}

// Client returns a minio client of the server, authenticated, for tests
// that look at the bucket directly.
func (s *SeaweedServer) Client() *minio.Client { return s.client }

func randomSuffix() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// NewBucket creates a fresh, empty bucket for t and returns its name.
// Prefer NewTarget: every bucket is a SeaweedFS collection with volumes of
// its own.
func (s *SeaweedServer) NewBucket(t testing.TB) string {
	t.Helper()
	s.mu.Lock()
	s.n++
	name := fmt.Sprintf("stasis-b%d-%s", s.n, randomSuffix())
	s.mu.Unlock()
	if err := s.client.MakeBucket(t.Context(), name, minio.MakeBucketOptions{Region: SeaweedRegion}); err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
	return name
}

// S3Target is a fresh, empty place for a repository on a test SeaweedFS.
type S3Target struct {
	// URL is the repository URL, s3:http://127.0.0.1:PORT/BUCKET/PREFIX.
	URL string
	// Config is URL parsed, with the credentials filled in.
	Config s3.Config
	// Env holds the environment variables (NAME=value) a stasis process
	// needs for URL: the credentials and the region.
	Env []string
}

// NewTarget returns a fresh prefix in SeaweedBucket for t.
func (s *SeaweedServer) NewTarget(t testing.TB) S3Target {
	t.Helper()
	s.mu.Lock()
	s.n++
	prefix := fmt.Sprintf("t%d-%s/%s", s.n, randomSuffix(), sanitize(t.Name()))
	s.mu.Unlock()
	return s.target(t, SeaweedBucket, prefix)
}

// TargetIn returns the target of bucket and prefix ("" for the bucket's
// root) on s.
func (s *SeaweedServer) TargetIn(t testing.TB, bucket, prefix string) S3Target {
	t.Helper()
	return s.target(t, bucket, prefix)
}

func (s *SeaweedServer) target(t testing.TB, bucket, prefix string) S3Target {
	t.Helper()
	tg, err := s.Target(bucket, prefix)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// Target returns the target of bucket and prefix ("" for the bucket's
// root) on s, like TargetIn, for use outside tests. It creates nothing:
// SeaweedBucket exists; another bucket must be made first (Client).
func (s *SeaweedServer) Target(bucket, prefix string) (S3Target, error) {
	u := "s3:http://" + s.Endpoint + "/" + bucket
	if prefix != "" {
		u += "/" + prefix
	}
	cfg, err := s3.Parse(u)
	if err != nil {
		return S3Target{}, fmt.Errorf("parse %s: %w", u, err)
	}
	cfg.AccessKeyID, cfg.SecretAccessKey, cfg.Region = SeaweedAccessKey, SeaweedSecretKey, SeaweedRegion
	return S3Target{
		URL:    u,
		Config: cfg,
		Env: []string{
			s3.EnvAccessKeyID + "=" + SeaweedAccessKey,
			s3.EnvSecretAccessKey + "=" + SeaweedSecretKey,
			s3.EnvRegion + "=" + SeaweedRegion,
		},
	}, nil
}

// sanitize makes a test name a key prefix element.
func sanitize(name string) string {
	b := []byte(name)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) > 100 {
		b = b[:100]
	}
	return string(b)
}

// Setenv sets the target's environment variables for the test (not for a
// parallel test: see testing.T.Setenv).
func (tg S3Target) Setenv(t testing.TB) {
	t.Helper()
	for _, kv := range tg.Env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}

// Open opens the target's storage.
func (tg S3Target) Open(t testing.TB) *s3.Storage {
	t.Helper()
	st, err := s3.Open(t.Context(), tg.Config)
	if err != nil {
		t.Fatalf("open %s: %v", tg.URL, err)
	}
	return st
}

// NewS3 returns a ready, empty S3 storage on the test binary's SeaweedFS
// (a fresh prefix) and its target (URL and environment for a stasis
// process). It skips the test when there is no weed binary.
func NewS3(t testing.TB) (*s3.Storage, S3Target) {
	t.Helper()
	tg := Seaweed(t).NewTarget(t)
	return tg.Open(t), tg
}

// ObjectKeys returns the sorted keys of the bucket under prefix, read
// directly (not through a backend.Storage), for tests that check what a
// storage left in the bucket.
func (s *SeaweedServer) ObjectKeys(t testing.TB, bucket, prefix string) []string {
	t.Helper()
	var keys []string
	for o := range s.client.ListObjects(t.Context(), bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatalf("list %s/%s: %v", bucket, prefix, o.Err)
		}
		keys = append(keys, o.Key)
	}
	slices.Sort(keys)
	return keys
}

// Logs returns the server's logs (for a failing test's message).
func (s *SeaweedServer) Logs() string { return s.logTail() }
