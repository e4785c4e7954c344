// Package memberlist (this file is compiled into a copy of hashicorp/memberlist
// 0.2.2's own package by bench/core.py, never into the project): feeds a recorded
// packet stream to memberlist's real handlers and reports the CPU it took.
//
// Owns: a Transport that delivers nothing and discards what is sent (counting it),
// a net.Conn that plays one recorded stream message and discards the reply, and the
// timed loop. Does not: generate streams (bench/core.py does, with our encoder) or
// start memberlist's schedulers (no probes or gossip of its own during the timing).
//
// Per packet the loop does what memberlist's packetListen + packetHandler
// goroutines do: ingestPacket (decrypt, CRC, decompress, compound, ping/ack handled
// inline, reply encoded and written), then the handoff queue is drained in the same
// goroutine (alive/suspect/dead state updates; packetHandler is kept out). Streams go through handleConn
// (push/pull: read, merge, local state encoded and written).
//
// Input file records: kind (1 byte: 'p' preload packet, 's' preload stream, 'P' and
// 'S' the timed ones), source IPv4 (4), source port (2, BE), length (4, BE), payload.
// Environment: CORE_FILE, CORE_NAME, CORE_ADDR, CORE_KEY (hex, optional),
// CORE_COMPRESS (0/1), CORE_REPS, CORE_DEBUG=1 (memberlist's log to stderr). Output: one JSON line per repetition.
package memberlist

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/ioutil"
	"net"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"
)

type benchRecord struct {
	kind byte
	from *net.UDPAddr
	data []byte
}

type benchTransport struct {
	packets chan *Packet
	streams chan net.Conn
	sent    int
	bytes   int
}

func (t *benchTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return net.ParseIP(ip), port, nil
}
func (t *benchTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	t.sent++
	t.bytes += len(b)
	return time.Now(), nil
}
func (t *benchTransport) PacketCh() <-chan *Packet  { return t.packets }
func (t *benchTransport) StreamCh() <-chan net.Conn { return t.streams }
func (t *benchTransport) Shutdown() error           { return nil }
func (t *benchTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return nil, fmt.Errorf("bench transport dials nobody")
}

type benchConn struct {
	r       *bytes.Reader
	remote  net.Addr
	written int
}

func (c *benchConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c *benchConn) Write(p []byte) (int, error)        { c.written += len(p); return len(p), nil }
func (c *benchConn) Close() error                       { return nil }
func (c *benchConn) LocalAddr() net.Addr                { return c.remote }
func (c *benchConn) RemoteAddr() net.Addr               { return c.remote }
func (c *benchConn) SetDeadline(t time.Time) error      { return nil }
func (c *benchConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *benchConn) SetWriteDeadline(t time.Time) error { return nil }

func benchRead(path string) ([]benchRecord, error) {
	raw, err := ioutil.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []benchRecord
	for pos := 0; pos < len(raw); {
		if pos+11 > len(raw) {
			return nil, fmt.Errorf("truncated record header at %d", pos)
		}
		kind := raw[pos]
		ip := net.IPv4(raw[pos+1], raw[pos+2], raw[pos+3], raw[pos+4])
		port := int(binary.BigEndian.Uint16(raw[pos+5:]))
		n := int(binary.BigEndian.Uint32(raw[pos+7:]))
		pos += 11
		if pos+n > len(raw) {
			return nil, fmt.Errorf("truncated record at %d", pos)
		}
		out = append(out, benchRecord{kind, &net.UDPAddr{IP: ip, Port: port}, raw[pos : pos+n]})
		pos += n
	}
	return out, nil
}

func (m *Memberlist) benchDrain() {
	for {
		msg, ok := m.getNextMessage()
		if !ok {
			return
		}
		switch msg.msgType {
		case suspectMsg:
			m.handleSuspect(msg.buf, msg.from)
		case aliveMsg:
			m.handleAlive(msg.buf, msg.from)
		case deadMsg:
			m.handleDead(msg.buf, msg.from)
		case userMsg:
			m.handleUser(msg.buf, msg.from)
		}
	}
}

func (m *Memberlist) benchFeed(r benchRecord) int {
	if r.kind == 'p' || r.kind == 'P' {
		// ingestPacket may hold on to the buffer (handoff): give it its own copy,
		// as the UDP listener does.
		buf := make([]byte, len(r.data))
		copy(buf, r.data)
		m.ingestPacket(buf, r.from, time.Now())
		m.benchDrain()
		return 0
	}
	c := &benchConn{r: bytes.NewReader(r.data), remote: r.from}
	m.handleConn(c)
	return c.written
}

func cpuNow() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func TestCoreBench(t *testing.T) {
	path := os.Getenv("CORE_FILE")
	if path == "" {
		t.Skip("CORE_FILE not set (run by bench/core.py)")
	}
	records, err := benchRead(path)
	if err != nil {
		t.Fatal(err)
	}
	reps, _ := strconv.Atoi(os.Getenv("CORE_REPS"))
	if reps < 1 {
		reps = 1
	}
	var key []byte
	if k := os.Getenv("CORE_KEY"); k != "" {
		if key, err = hex.DecodeString(k); err != nil {
			t.Fatal(err)
		}
	}
	enc := json.NewEncoder(os.Stdout)
	for rep := 0; rep < reps; rep++ {
		tr := &benchTransport{packets: make(chan *Packet), streams: make(chan net.Conn)}
		conf := DefaultLANConfig()
		conf.Name = os.Getenv("CORE_NAME")
		conf.BindAddr = os.Getenv("CORE_ADDR")
		conf.AdvertiseAddr = conf.BindAddr
		conf.BindPort, conf.AdvertisePort = 7946, 7946
		conf.Transport = tr
		conf.LogOutput = ioutil.Discard
		if os.Getenv("CORE_DEBUG") == "1" {
			conf.LogOutput = os.Stderr
		}
		conf.EnableCompression = os.Getenv("CORE_COMPRESS") == "1"
		conf.SecretKey = key
		m, err := newMemberlist(conf)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.setAlive(); err != nil {
			t.Fatal(err)
		}
		// memberlist's packetHandler goroutine waits on handoffCh; once it is blocked
		// there, a fresh channel nobody reads keeps it out, so every message is handled
		// in this goroutine (benchDrain) and is done when the loop moves on.
		time.Sleep(20 * time.Millisecond)
		m.handoffCh = make(chan struct{}, 1)
		timed, packets, streams, replyBytes := false, 0, 0, 0
		var c0 float64
		var w0 time.Time
		for _, r := range records {
			if !timed && (r.kind == 'P' || r.kind == 'S') {
				runtime.GC() // the preload's garbage is not the stream's
				tr.sent, tr.bytes = 0, 0
				timed = true
				w0 = time.Now()
				c0 = cpuNow()
			}
			replyBytes += m.benchFeed(r)
			if timed {
				if r.kind == 'P' {
					packets++
				} else {
					streams++
				}
			}
		}
		cpu := cpuNow() - c0
		wall := time.Since(w0).Seconds()
		enc.Encode(map[string]interface{}{
			"rep": rep, "cpu_s": cpu, "wall_s": wall, "packets": packets, "streams": streams,
			"sent": tr.sent, "sent_bytes": tr.bytes + replyBytes, "members": m.NumMembers(),
		})
		m.Shutdown()
	}
}
