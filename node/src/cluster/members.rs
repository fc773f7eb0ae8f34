//! Changes to the Raft membership through the admin API: add a node (as a learner that catches
//! up, then a voter) and remove one.

use openraft::ChangeMembers;
use switchboard_proto::rooms::NodeId;

use super::types::PeerInfo;
use super::Cluster;

impl Cluster {
    /// Adds a node: first as a learner (it catches up), then as a voter.
    pub async fn add_node(&self, id: NodeId, info: PeerInfo) -> Result<(), String> {
        self.links.link(id, Some(&info));
        self.raft.add_learner(id, info, true).await.map_err(|e| e.to_string())?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds([id].into_iter().collect()), false)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Removes a node from the voters and the membership.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), String> {
        self.raft
            .change_membership(ChangeMembers::RemoveVoters([id].into_iter().collect()), false)
            .await
            .map_err(|e| e.to_string())?;
        self.raft
            .change_membership(ChangeMembers::RemoveNodes([id].into_iter().collect()), false)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}
