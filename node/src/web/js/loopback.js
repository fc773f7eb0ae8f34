// Loopback mode (?debug=loopback): a second peer inside the page registers on the signaling
// server as `loopback_client_id` and answers the call, so one browser exercises the whole
// signaling path (room server → Collider → WebSocket) and a real peer connection.
(function () {
  'use strict';

  function LoopbackPeer(call) {
    this.call = call;
    this.clientId = 'loopback_client_id';
    this.pc = null;
    this.ws = null;
    this.pending = [];
  }

  LoopbackPeer.prototype.start = function () {
    var self = this;
    var pc = this.pc = new RTCPeerConnection(this.call.rtcConfig());
    pc.ontrack = function () {};
    pc.onicecandidate = function (e) {
      if (e.candidate && e.candidate.candidate) {
        self.send({ type: 'candidate', label: e.candidate.sdpMLineIndex, id: e.candidate.sdpMid, candidate: e.candidate.candidate });
      }
    };
    var ws = this.ws = new WebSocket(this.call.wssUrl);
    ws.onopen = function () {
      ws.send(JSON.stringify({ cmd: 'register', roomid: self.call.room, clientid: self.clientId }));
    };
    ws.onmessage = async function (e) {
      var frame = JSON.parse(e.data);
      if (frame.error || !frame.msg) return;
      var msg = JSON.parse(frame.msg);
      try {
        if (msg.type === 'offer') {
          await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
          for (var i = 0; i < self.pending.length; i++) await pc.addIceCandidate(self.pending[i]);
          self.pending = [];
          await pc.setLocalDescription(await pc.createAnswer());
          self.send({ type: 'answer', sdp: pc.localDescription.sdp });
        } else if (msg.type === 'candidate') {
          var c = { candidate: msg.candidate, sdpMLineIndex: msg.label, sdpMid: msg.id };
          if (!pc.remoteDescription) self.pending.push(c); else await pc.addIceCandidate(c);
        }
      } catch (err) {
        console.log('[loopback] ' + err);
      }
    };
    window.switchboard.loopback = this;
  };

  LoopbackPeer.prototype.send = function (msg) {
    if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ cmd: 'send', msg: JSON.stringify(msg) }));
    }
  };

  window.SwitchboardLoopback = LoopbackPeer;
})();
