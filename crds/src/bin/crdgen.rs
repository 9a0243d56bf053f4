fn main() {
    use kube::CustomResourceExt;
    let crd = tortie_crds::ippool::IPPool::crd();
    println!("{}", serde_saphyr::to_string(&crd).unwrap());
}
