//! Changes to the Raft membership through the admin API: add a node (as a learner that catches
//! up, then a voter, or as a learner that stays one), promote a learner, remove a node.

use openraft::ChangeMembers;
use switchboard_proto::rooms::NodeId;

use super::types::PeerInfo;
use super::Cluster;

impl Cluster {
    /// Adds a node: first as a learner (it catches up), then, if `voter`, as a voter. A learner
    /// serves clients like any node; commits do not wait for it.
    pub async fn add_node(&self, id: NodeId, info: PeerInfo, voter: bool) -> Result<(), String> {
        self.links.link(id, Some(&info));
        self.raft.add_learner(id, info, true).await.map_err(|e| e.to_string())?;
        if voter {
            self.promote_node(id).await?;
        }
        Ok(())
    }

    /// Makes learner `id` a voter.
    pub async fn promote_node(&self, id: NodeId) -> Result<(), String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        if !m.nodes().any(|(n, _)| *n == id) {
            return Err(format!("node {id} is not a member; add it first"));
        }
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
